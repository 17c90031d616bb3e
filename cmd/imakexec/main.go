// Command imakexec keeps the Linux IMA measurement log whole and verifiable across
// kernel-side deletion of records and kexec soft reboots. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	// The first SIGINT or SIGTERM cancels the command's context: it stops at its next
	// check, removes its temp files and releases the store's lock, and deletes nothing it
	// has not finished storing. A second one exits at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "imakexec: %v: stopping (again to exit at once)\n", s)
		cancel()
		s = <-sigs
		fmt.Fprintf(os.Stderr, "imakexec: %v: exiting now\n", s)
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	args := os.Args[1:]
	if hook, ok := hookArgs(os.Args, os.Getpid()); ok {
		args = hook
	}
	code := run(ctx, &Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}, args)
	signal.Stop(sigs)
	cancel()
	os.Exit(code)
}
