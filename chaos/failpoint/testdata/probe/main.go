// Command probe is built by the failpoint package's tests, with and without
// the failpoints tag, to check what a call site costs in each build.
package main

import (
	"fmt"
	"os"

	"github.com/strata-registry/strata/chaos/failpoint"
)

func main() {
	if failpoint.Enabled {
		if err := failpoint.Eval("probe-point"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Println("probe ran")
}
