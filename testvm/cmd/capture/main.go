// Command capture boots test kernels in QEMU with swtpm and saves the IMA
// measurement lists and PCRs they produce, as test data for the serialize
// package. scripts/capture-testdata.sh runs it and cross-checks the results
// with evmctl.
//
// Usage:
//
//	go run ./testvm/cmd/capture -out serialize/testdata/vm [-variants a,b] [-logs DIR]
//
// Every variant is one boot of the guest testvm/guest/imacapture (see its
// doc for what it measures), with the kernel command line selecting the IMA
// template and hash. The files of variant V go to OUT/V/, replacing what was
// there; jump variants have OUT/V/before/ and OUT/V/after/.
package main

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/frame"
)

const (
	guestPkg = testvm.ModulePath + "/testvm/guest/imacapture"
	helloPkg = testvm.ModulePath + "/testvm/guest/hello"
)

// kernel kinds a variant can ask for.
const (
	debianKernel   = "debian"    // the Debian cloud kernel (testvm.FindKernel)
	imaKexecKernel = "ima-kexec" // CONFIG_IMA_KEXEC=y (testvm.FindIMAKexecKernel)
)

type variant struct {
	name   string
	kernel string
	append string
	note   string
}

var variants = []variant{
	{"ima-ng", debianKernel, "ima_template=ima-ng ima_hash=sha256",
		"ima-ng, sha256"},
	{"ima-sig", debianKernel, "ima_template=ima-sig ima_hash=sha256",
		"ima-sig (Debian's default template), sha256; one record carries a signature"},
	{"custom-fmt", debianKernel, "ima_template_fmt=d-ng|n-ng|sig|iuid|igid|imode ima_hash=sha256",
		"custom template format with iuid/igid/imode (Linux >= 5.14)"},
	{"ima-sha1", debianKernel, "ima_template=ima ima_hash=sha1 imacapture.kexeccmdline=0",
		"the original \"ima\" template (no template data length in the binary list), sha1; no KEXEC_CMDLINE rule so that every record uses the ima template"},
	{"ima-sha1-buf", debianKernel, "ima_template=ima ima_hash=sha1",
		"\"ima\" template plus one ima-buf kexec-cmdline record: a list mixing templates (evmctl refuses it)"},
	{"kexec-debian", debianKernel, "ima_template=ima-ng ima_hash=sha256 imacapture.kexec=jump",
		"kexec round trip into the same Debian kernel (no CONFIG_IMA_KEXEC): before/ is taken right before reboot(KEXEC), after/ in the new kernel"},
	{"ima-kexec-ima-ng", imaKexecKernel, "ima_template=ima-ng ima_hash=sha256",
		"the CONFIG_IMA_KEXEC=y 6.1 kernel, no jump"},
	{"kexec-ima-kexec", imaKexecKernel, "ima_template=ima-ng ima_hash=sha256 imacapture.kexec=jump",
		"kexec round trip on the CONFIG_IMA_KEXEC=y 6.1 kernel: after/ starts with the carried list"},
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("capture: ")
	out := flag.String("out", "", "output directory (required), e.g. serialize/testdata/vm")
	only := flag.String("variants", "", "comma-separated variants (default: all whose kernel is available)")
	logs := flag.String("logs", "", "keep console/data logs and TPM state in this directory")
	list := flag.Bool("list", false, "list the variants and exit")
	flag.Parse()
	if *list {
		for _, v := range variants {
			fmt.Printf("%-18s %-9s %s\n%28s%s\n", v.name, v.kernel, v.append, "", v.note)
		}
		return
	}
	if *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*out, *only, *logs); err != nil {
		log.Fatal(err)
	}
}

func run(out, only, logs string) error {
	selected, err := selectVariants(only)
	if err != nil {
		return err
	}
	kernels := map[string]string{}
	for _, v := range selected {
		if _, ok := kernels[v.kernel]; ok {
			continue
		}
		find := testvm.FindKernel
		if v.kernel == imaKexecKernel {
			find = testvm.FindIMAKexecKernel
		}
		k, err := find()
		if err != nil {
			if only == "" && v.kernel == imaKexecKernel {
				log.Printf("skipping %s variants: %v", v.kernel, err)
				kernels[v.kernel] = ""
				continue
			}
			return err
		}
		log.Printf("%s kernel: %s", v.kernel, k)
		kernels[v.kernel] = k
	}
	if logs == "" {
		if logs, err = os.MkdirTemp("", "capture"); err != nil {
			return err
		}
		defer os.RemoveAll(logs)
	}
	defer testvm.CleanupImages()

	for _, v := range selected {
		if kernels[v.kernel] == "" {
			continue
		}
		if err := capture(v, kernels[v.kernel], out, filepath.Join(logs, v.name)); err != nil {
			return fmt.Errorf("variant %s: %w", v.name, err)
		}
	}
	return nil
}

func selectVariants(only string) ([]variant, error) {
	if only == "" {
		return variants, nil
	}
	var sel []variant
	for _, name := range strings.Split(only, ",") {
		i := slices.IndexFunc(variants, func(v variant) bool { return v.name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown variant %q (try -list)", name)
		}
		sel = append(sel, variants[i])
	}
	return sel, nil
}

func capture(v variant, kernel, out, logDir string) error {
	ctx := context.Background()
	sign, err := newSigner()
	if err != nil {
		return err
	}
	data, err := guestData(sign)
	if err != nil {
		return err
	}
	// The kexec'd kernel's initramfs: the same programs and data, no kernel.
	second := &testvm.Image{Init: guestPkg, Programs: map[string]string{"bin/hello": helloPkg}, Data: data}
	secondPath, err := testvm.BuildImage(ctx, second)
	if err != nil {
		return err
	}
	first := *second
	first.Files = map[string]string{"boot/vmlinuz": kernel, "boot/initrd.cpio": secondPath}
	firstPath, err := testvm.BuildImage(ctx, &first)
	if err != nil {
		return err
	}

	os.RemoveAll(logDir)
	m := &testvm.Machine{Kernel: kernel, Initramfs: firstPath, Append: v.append, Dir: logDir, Timeout: 5 * time.Minute}
	log.Printf("%s: booting (%s)", v.name, v.append)
	res, err := m.Run(ctx)
	if err == nil {
		err = res.Stream.GuestError()
	}
	if err == nil && !res.Stream.HasMark(frame.MarkPoweroff) {
		err = errors.New("guest did not power off")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s\n--- console ---\n%s\n--- qemu: %s\n", err, res.Console, res.CommandLine())
		return err
	}
	log.Printf("%s: %v, marks %q", v.name, res.Elapsed.Round(100*time.Millisecond), res.Stream.Marks())

	// Write into a fresh directory, then swap it in.
	final := filepath.Join(out, v.name)
	tmp := final + ".new"
	os.RemoveAll(tmp)
	for _, b := range res.Stream.Blobs() {
		if err := writeBlob(tmp, b.Name, b.Data); err != nil {
			return err
		}
	}
	if err := writeBlob(tmp, "signing-key.pub.pem", sign.pubPEM); err != nil {
		return err
	}
	if err := writeBlob(tmp, "signing-cert.der", sign.certDER); err != nil {
		return err
	}
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	log.Printf("%s: wrote %s", v.name, final)
	return nil
}

func writeBlob(dir, name string, data []byte) error {
	clean := filepath.Clean(name)
	if !filepath.IsLocal(clean) {
		return fmt.Errorf("guest sent a blob with a bad name %q", name)
	}
	p := filepath.Join(dir, clean)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

// guestData returns the files imacapture reads (etc/imacapture/*).
func guestData(s *signer) (map[string][]byte, error) {
	signed := []byte("this file carries an IMA signature in security.ima\n")
	sig, err := s.imaSig(signed)
	if err != nil {
		return nil, err
	}
	long := filepath.Join("etc/imacapture", strings.Repeat("d", 120), strings.Repeat("e", 120), "long-name.txt")
	return map[string][]byte{
		"etc/imacapture/data.txt":       []byte("imacapture test data\n"),
		"etc/imacapture/with space.txt": []byte("a file name with a space\n"),
		long:                            []byte("a path longer than 255 bytes\n"),
		"etc/imacapture/signed.txt":     signed,
		"etc/imacapture/signed.txt.sig": sig,
	}, nil
}

// testKey is a fixed RSA-2048 key, for tests only (it is public, in this
// repository). A fixed key keeps captures reproducible: PKCS#1 v1.5
// signatures are deterministic, so recapturing on the same kernels gives
// byte-identical files.
//
//go:embed testdata/ima-test-key.pem
var testKey []byte

// signer makes IMA v2 signatures (what evmctl sign --imasig writes); the
// public key is saved next to the capture.
type signer struct {
	key    *rsa.PrivateKey
	keyID  [4]byte
	pubPEM []byte
	// certDER is a self-signed certificate of the key, the form evmctl
	// --key wants to check the signatures in a list.
	certDER []byte
}

func newSigner() (*signer, error) {
	block, _ := pem.Decode(testKey)
	if block == nil {
		return nil, errors.New("testdata/ima-test-key.pem: no PEM block")
	}
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("testdata/ima-test-key.pem: %w", err)
	}
	// ima-evm-utils calc_keyid_v2: the last 4 bytes of the SHA-1 of the
	// PKCS#1 RSAPublicKey DER.
	id := sha1.Sum(x509.MarshalPKCS1PublicKey(&key.PublicKey))
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	// Fixed fields and a deterministic signature keep the certificate
	// byte-identical between captures.
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "imakexec IMA test key (public, tests only)"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2099, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		SubjectKeyId:          id[:],
		BasicConstraintsValid: true,
	}
	cert, err := x509.CreateCertificate(zeroReader{}, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("test certificate: %w", err)
	}
	s := &signer{key: key, pubPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), certDER: cert}
	copy(s.keyID[:], id[len(id)-4:])
	return s, nil
}

// zeroReader is the "randomness" for CreateCertificate: RSA PKCS#1 v1.5 does
// not use it, and nothing here is secret.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// imaSig returns a security.ima value: struct signature_v2_hdr
// (include/linux/integrity.h, security/integrity/integrity.h) = type
// EVM_IMA_XATTR_DIGSIG (3), version 2, hash_algo (HASH_ALGO_SHA256 = 4),
// keyid (be32), sig_size (be16), then the PKCS#1 v1.5 signature of the
// file's SHA-256.
func (s *signer) imaSig(content []byte) ([]byte, error) {
	digest := sha256.Sum256(content)
	sig, err := rsa.SignPKCS1v15(nil, s.key, crypto.SHA256, digest[:])
	if err != nil {
		return nil, err
	}
	b := []byte{3, 2, 4}
	b = append(b, s.keyID[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(sig)))
	return append(b, sig...), nil
}
