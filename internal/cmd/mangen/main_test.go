package main

import "testing"

func TestCommandList(t *testing.T) {
	top := "Usage: x\n\nCommands:\n  drain      move records\n  verify     prove\n\nGlobal flags:\n  --tpm\n"
	got := commandList(top)
	if len(got) != 2 || got[0] != "drain" || got[1] != "verify" {
		t.Fatalf("commandList = %q, want [drain verify]", got)
	}
	if got := commandList("no list here\n"); len(got) != 0 {
		t.Fatalf("commandList without a list = %q", got)
	}
}
