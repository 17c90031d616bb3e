//go:build examplestore

package handover

import (
	"os"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// TestWriteExampleStore rewrites testdata/store, the store Example_verifier reads:
//
//	go test -tags examplestore -run TestWriteExampleStore ./handover
func TestWriteExampleStore(t *testing.T) {
	e := twoKexecs(t, kmodel.ProfileDebian61)
	os.RemoveAll("testdata/store")
	copyTree(t, e.store, "testdata/store")
	os.Remove("testdata/store/lock")
}
