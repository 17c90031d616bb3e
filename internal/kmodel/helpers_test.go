package kmodel_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

var le = serialize.NewDigester().Order

var allBanks = []serialize.Bank{serialize.SHA1, serialize.SHA256, serialize.SHA384, serialize.SHA512}

// readRecords reads a binary list file through the mount and parses it with serialize.
func readRecords(t testing.TB, file string, digestSize int) []serialize.Record {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	return parseList(t, b, digestSize)
}

func parseList(t testing.TB, b []byte, digestSize int) []serialize.Record {
	t.Helper()
	br := serialize.NewBinaryReader(bytes.NewReader(b), le, digestSize)
	var out []serialize.Record
	for {
		r, err := br.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("parse list: %v", err)
		}
		out = append(out, r.Clone())
	}
}

// list reads the current list through the legacy name (a symlink to _sha1 from 6.10).
func list(t testing.TB, env *kmodeltest.Env) []serialize.Record {
	return readRecords(t, filepath.Join(env.IMADir, "binary_runtime_measurements"), 20)
}

// replay replays recs in every bank and compares with the TPM; it returns the error.
func replay(t testing.TB, env *kmodeltest.Env, recs []serialize.Record) error {
	t.Helper()
	r, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: allBanks, DigestBank: &serialize.SHA1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if err := r.Add(&recs[i]); err != nil {
			return err
		}
	}
	res := r.Result()
	pcrs, err := kmodel.ReadPCRs(env.TPM, allBanks, r.Touched())
	if err != nil {
		t.Fatal(err)
	}
	_, err = res.Verify(pcrs)
	return err
}

func mustReplay(t testing.TB, env *kmodeltest.Env, recs []serialize.Record, what string) {
	t.Helper()
	if err := replay(t, env, recs); err != nil {
		t.Fatalf("%s: %d records do not replay to the TPM: %v", what, len(recs), err)
	}
}

func mustNotReplay(t testing.TB, env *kmodeltest.Env, recs []serialize.Record, what string) {
	t.Helper()
	if err := replay(t, env, recs); err == nil {
		t.Fatalf("%s: %d records replay to the TPM, expected a mismatch", what, len(recs))
	}
}

// writeFile opens name with flags through the mount and writes s, returning the errno of
// the open or the write.
func writeFile(name string, flags int, s string) error {
	f, err := os.OpenFile(name, flags, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write([]byte(s))
	return err
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// openAs opens name with flags on a thread whose effective uid/gid are changed (per
// thread, with the raw syscalls), and closes it again. It returns the open's error.
func openAs(uid, gid int, name string, flags int) error {
	ch := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer func() {
			// Back to root on this thread (the saved uid is still 0), then unlock.
			syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0))
			syscall.RawSyscall(syscall.SYS_SETRESGID, ^uintptr(0), 0, ^uintptr(0))
			runtime.UnlockOSThread()
		}()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
			ch <- e
			return
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			ch <- e
			return
		}
		f, err := os.OpenFile(name, flags, 0)
		if err == nil {
			f.Close()
		}
		ch <- err
	}()
	return <-ch
}
