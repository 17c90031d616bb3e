// Package tpmserve serves a TPM on a unix socket that speaks raw TPM 2.0 commands, as
// swtpm's socket and go-tpm's linuxudstpm transport do: per connection, read one full
// command (10-byte header, big-endian u32 size at offset 2), send it to the TPM, write the
// response, and repeat until the client closes.
package tpmserve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"
)

// MaxCommandSize bounds a command; TPM 2.0 implementations accept at most a few KiB.
const MaxCommandSize = 64 << 10

const headerSize = 10

// Server is a listening socket.
type Server struct {
	l     net.Listener
	tpm   transport.TPM
	path  string
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
	done  bool
}

// Listen creates the socket at path (removing a stale socket there) and serves t on it
// until Close.
func Listen(path string, t transport.TPM) (*Server, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("tpm socket: %w", err)
	}
	s := &Server{l: l, tpm: t, path: path, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Path is the socket path.
func (s *Server) Path() string { return s.path }

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			Serve(c, s.tpm)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops listening, closes open connections and removes the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.l.Close()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

// Serve answers commands on one connection until EOF or an error.
func Serve(rw io.ReadWriter, t transport.TPM) error {
	var hdr [headerSize]byte
	for {
		if _, err := io.ReadFull(rw, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		size := binary.BigEndian.Uint32(hdr[2:])
		if size < headerSize || size > MaxCommandSize {
			rw.Write(errorResponse(tpmRCCommandSize))
			return fmt.Errorf("tpm socket: command size %d", size)
		}
		cmd := make([]byte, size)
		copy(cmd, hdr[:])
		if _, err := io.ReadFull(rw, cmd[headerSize:]); err != nil {
			return err
		}
		rsp, err := t.Send(cmd)
		if err != nil {
			rsp = errorResponse(tpmRCFailure)
		}
		if _, err := rw.Write(rsp); err != nil {
			return err
		}
	}
}

const (
	tpmRCFailure     = 0x101
	tpmRCCommandSize = 0x142
)

func errorResponse(rc uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, 0x8001)
	b = binary.BigEndian.AppendUint32(b, headerSize)
	return binary.BigEndian.AppendUint32(b, rc)
}
