package initramfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// zstdFrameLen returns the length of the zstd frame that starts at off, found from the
// frame and block headers alone (RFC 8878 §3.1.1). The kernel's unzstd stops at the end of
// the first frame and unpack_to_rootfs resumes after it, so the next archive starts there.
// The decoder of klauspost/compress reads ahead, which is why the end is found here.
func zstdFrameLen(r io.ReaderAt, off, size int64) (int64, error) {
	pos := off
	read := func(n int) ([]byte, error) {
		if pos+int64(n) > size {
			return nil, io.ErrUnexpectedEOF
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, pos); err != nil {
			return nil, err
		}
		pos += int64(n)
		return b, nil
	}
	h, err := read(5)
	if err != nil {
		return 0, err
	}
	if binary.LittleEndian.Uint32(h) != 0xFD2FB528 {
		return 0, errors.New("not a zstd frame")
	}
	fhd := h[4]
	if fhd&0x08 != 0 {
		return 0, errors.New("reserved bit set in frame header descriptor")
	}
	fcsFlag := fhd >> 6
	single := fhd&0x20 != 0
	checksum := fhd&0x04 != 0
	n := int64(0)
	if !single {
		n++ // window descriptor
	}
	n += []int64{0, 1, 2, 4}[fhd&0x03]
	switch fcsFlag {
	case 0:
		if single {
			n++
		}
	case 1:
		n += 2
	case 2:
		n += 4
	case 3:
		n += 8
	}
	if pos+n > size {
		return 0, io.ErrUnexpectedEOF
	}
	pos += n
	for blocks := 0; ; blocks++ {
		bh, err := read(3)
		if err != nil {
			return 0, err
		}
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last := v&1 != 0
		typ := (v >> 1) & 3
		bsize := int64(v >> 3)
		switch typ {
		case 0, 2: // raw, compressed
		case 1: // RLE: one byte on the wire
			bsize = 1
		default:
			return 0, fmt.Errorf("reserved block type at offset %d", pos-3)
		}
		if bsize > 128<<10 {
			return 0, fmt.Errorf("block of %d bytes exceeds 128 KiB", bsize)
		}
		if pos+bsize > size {
			return 0, io.ErrUnexpectedEOF
		}
		pos += bsize
		if last {
			break
		}
	}
	if checksum {
		if pos+4 > size {
			return 0, io.ErrUnexpectedEOF
		}
		pos += 4
	}
	return pos - off, nil
}
