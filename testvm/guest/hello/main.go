// Command hello is a tiny program for test guests to execute, so that IMA's
// BPRM_CHECK hook measures an executable.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("hello from", os.Args[0])
}
