// Command imakexec keeps the Linux IMA measurement log whole and verifiable across
// kernel-side deletion of records and kexec soft reboots. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	args := os.Args[1:]
	if hook, ok := hookArgs(os.Args, os.Getpid()); ok {
		args = hook
	}
	code := run(ctx, &Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}, args)
	stop()
	os.Exit(code)
}
