// Command strata is the Strata registry: one binary whose roles (api, meta,
// storage) run together or apart. `strata serve --dev` starts a complete
// single-node registry with no configuration.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	root := &cobra.Command{
		Use:   "strata",
		Short: "Strata: a highly available, erasure-coded OCI container registry for bare metal",
		Long: `Strata is a self-hosted OCI Distribution v1.1 registry. Metadata is replicated
by Raft into Pebble; blobs are erasure coded across storage nodes.

Start a working single-node registry on 127.0.0.1:5000 with:

  strata serve --dev`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newVersionCmd(), newClusterCmd(), newDevCmd(), newLifecycleCmd(), newGCCmd(), newRepoCmd())
	root.AddCommand(newNodeCmd(), newStorageCmd(), newKeysCmd())
	root.AddCommand(newChaosCmd())
	root.AddCommand(newBenchCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "strata:", err)
		os.Exit(1)
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Println("strata", version)
		},
	}
}
