package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-registry/strata/api"
	"github.com/strata-registry/strata/keys"
)

// newKeysCmd is `strata keys`: the key-encryption keys. With --keyring the
// commands work on a keyring file directly (offline, or on a file the
// frontends share: they reload it when it changes); otherwise they go
// through a frontend's admin API (--server), which also rewraps the data
// keys in the background.
func newKeysCmd() *cobra.Command {
	a := &adminClient{}
	var ring string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List, rotate, retire and destroy the key-encryption keys",
		Long: `Strata wraps every blob's and manifest's data key with a key-encryption key
(KEK): the keyring's "default", a repository's own key (repo create --kms-key),
or a KMS plugin's key. Rotation adds a version and rewraps every data key in
the background, without rewriting any blob; the old version stays readable
until it is retired.

With --keyring FILE the commands change that file directly (frontends reload
it when it changes; give every frontend the new file). Without it they go
through the admin API of the frontend at --server, which owns its keyring.`,
		Example: `  strata keys rotate                    # on the frontend at $STRATA_URL: new version + rewrap, with progress
  strata keys status
  strata keys retire default 1          # once nothing is wrapped by version 1
  strata keys list --keyring ./strata-data/keyring`,
	}
	a.bind(cmd)
	cmd.PersistentFlags().StringVar(&ring, "keyring", "", "work on this keyring file instead of through --server")
	openRing := func() (*keys.Keyring, error) { return keys.OpenKeyring(ring, false) }
	var asJSON, noWait, force bool

	list := &cobra.Command{
		Use: "list", Short: "List the keys and their versions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var infos []keys.KeyInfo
			if ring != "" {
				r, err := openRing()
				if err != nil {
					return err
				}
				if infos, err = r.Keys(); err != nil {
					return err
				}
			} else {
				var out struct {
					Keys []keys.KeyInfo `json:"keys"`
				}
				if err := a.call(cmd.Context(), "ListKeys", map[string]any{}, &out); err != nil {
					return err
				}
				infos = out.Keys
			}
			if asJSON {
				return printJSON(infos)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tCURRENT\tVERSIONS\tSTATE")
			for _, ki := range infos {
				var vs []string
				for _, v := range ki.Versions {
					if v.Retired.IsZero() {
						vs = append(vs, v.Version)
					} else {
						vs = append(vs, v.Version+"(retired)")
					}
				}
				state := "active"
				if !ki.Destroyed.IsZero() {
					state = "destroyed " + ki.Destroyed.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ki.Name, ki.Current, strings.Join(vs, ","), state)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	create := &cobra.Command{
		Use: "create NAME", Short: "Create a key in a keyring file (repositories get theirs with repo create --kms-key)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ring == "" {
				return errors.New("keys create works on a keyring file: give --keyring")
			}
			r, err := openRing()
			if err != nil {
				return err
			}
			if err := r.Create(args[0]); err != nil {
				return err
			}
			fmt.Printf("created key %s (version 1)\n", args[0])
			return nil
		},
	}

	rotate := &cobra.Command{
		Use:   "rotate [NAME]",
		Short: "Add a key version and rewrap every data key under it in the background (default key: the server's)",
		Long: `Through a frontend (--server): the key gets a new version, then the frontend
walks every wrapped data key (blobs, manifests, uploads) and rewraps stale ones
under the new version, showing progress here until it is done (Ctrl-C stops
watching, not the pass; a pass that was interrupted resumes when run again).
With --keyring the file gets the new version only; run 'strata keys rotate
--no-new-version' through a frontend afterwards to rewrap.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			if ring != "" {
				if name == "" {
					name = keys.DefaultKeyName
				}
				r, err := openRing()
				if err != nil {
					return err
				}
				v, err := r.Rotate(name)
				if err != nil {
					return err
				}
				fmt.Printf("key %s: version %s is current; data keys are rewrapped by a frontend's pass (strata keys rotate --no-new-version --server URL)\n", name, v)
				return nil
			}
			keepVersion, _ := cmd.Flags().GetBool("no-new-version")
			var out struct {
				KeyName    string           `json:"keyName"`
				KeyVersion string           `json:"keyVersion"`
				Job        api.KeyJobStatus `json:"job"`
			}
			if err := a.call(cmd.Context(), "RotateKey", map[string]any{"keyName": name, "rotate": !keepVersion}, &out); err != nil {
				return err
			}
			fmt.Printf("key %s: version %s is current; rewrapping every data key in the background\n", out.KeyName, out.KeyVersion)
			if noWait {
				fmt.Println("follow it with: strata keys status")
				return nil
			}
			return a.followKeyPass(cmd.Context())
		},
	}
	rotate.Flags().Bool("no-new-version", false, "do not add a version: only rewrap what is stale (resume an interrupted rotation, or after a KMS rotated its key)")
	rotate.Flags().BoolVar(&noWait, "no-wait", false, "start the rewrap and return")

	status := &cobra.Command{
		Use: "status", Short: "Show the progress of the last rewrap pass", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Job api.KeyJobStatus `json:"job"`
			}
			if err := a.call(cmd.Context(), "GetKeyRotationStatus", map[string]any{}, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(out.Job)
			}
			fmt.Println(describeKeyJob(out.Job))
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	retire := &cobra.Command{
		Use:   "retire NAME VERSION",
		Short: "Delete an old key version, once no data key is wrapped by it any more",
		Long: `Through a frontend, a full rewrap pass runs first and the version is retired
only if it succeeded (--force skips that). With --keyring the file is changed
directly: make sure a rotation's pass has finished first.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ring != "" {
				r, err := openRing()
				if err != nil {
					return err
				}
				if err := r.Retire(args[0], args[1]); err != nil {
					return err
				}
			} else if err := a.call(cmd.Context(), "RetireKeyVersion", map[string]any{"keyName": args[0], "keyVersion": args[1], "force": force}, nil); err != nil {
				return err
			}
			fmt.Printf("key %s version %s retired: what it still wrapped can no longer be unwrapped\n", args[0], args[1])
			return nil
		},
	}
	retire.Flags().BoolVar(&force, "force", false, "retire without the rewrap pass first")

	destroy := &cobra.Command{
		Use:   "destroy NAME",
		Short: "Destroy every version of a keyring key (crypto-shredding: what it wrapped is unreadable for good)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ring == "" {
				return errors.New("keys destroy works on a keyring file (--keyring); deleting a repository destroys its own key through the server")
			}
			if !force {
				return fmt.Errorf("destroying key %s makes every blob and manifest it protects unreadable for good: repeat with --force", args[0])
			}
			r, err := openRing()
			if err != nil {
				return err
			}
			if err := r.Destroy(args[0]); err != nil {
				return err
			}
			fmt.Printf("key %s destroyed\n", args[0])
			return nil
		},
	}
	destroy.Flags().BoolVar(&force, "force", false, "yes, destroy it")

	cmd.AddCommand(list, create, rotate, status, retire, destroy)
	return cmd
}

// followKeyPass shows the running key pass's progress until it ends.
func (a *adminClient) followKeyPass(ctx context.Context) error {
	tty := isTerminal(os.Stderr)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	last := time.Time{}
	for {
		var out struct {
			Job api.KeyJobStatus `json:"job"`
		}
		if err := a.call(ctx, "GetKeyRotationStatus", map[string]any{}, &out); err != nil {
			return err
		}
		j := out.Job
		if j.State != "running" {
			if tty {
				fmt.Fprint(os.Stderr, "\r\033[K")
			}
			fmt.Println(describeKeyJob(j))
			if j.State == "failed" {
				return fmt.Errorf("the rewrap pass did not finish cleanly: %s", j.Error)
			}
			return nil
		}
		line := fmt.Sprintf("rewrapping: %d records scanned, %d stale, %d rewrapped, %d failed (%s)", j.Scanned, j.Stale, j.Rewrapped, j.Failed,
			time.Since(j.StartedAt).Round(time.Second))
		switch {
		case tty:
			fmt.Fprintf(os.Stderr, "\r%s\033[K", line)
		case time.Since(last) > 10*time.Second:
			fmt.Fprintln(os.Stderr, line)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func describeKeyJob(j api.KeyJobStatus) string {
	if j.State == "idle" {
		return "no rewrap pass since this frontend started"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): %d records scanned, %d stale copies, %d rewrapped, %d added for repository keys, %d failed",
		j.State, j.Reason, j.Scanned, j.Stale, j.Rewrapped, j.Added, j.Failed)
	if j.Destroyed > 0 {
		fmt.Fprintf(&b, ", %d under destroyed keys", j.Destroyed)
	}
	if !j.FinishedAt.IsZero() {
		fmt.Fprintf(&b, ", took %s", j.FinishedAt.Sub(j.StartedAt).Round(time.Millisecond))
	}
	if j.Error != "" {
		fmt.Fprintf(&b, "\nerror: %s", j.Error)
	}
	names := make([]string, 0, len(j.Versions))
	for n := range j.Versions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var parts []string
		vs := j.Versions[n]
		versions := make([]string, 0, len(vs))
		for v := range vs {
			versions = append(versions, v)
		}
		sort.Strings(versions)
		for _, v := range versions {
			parts = append(parts, fmt.Sprintf("version %s: %d", v, vs[v]))
		}
		fmt.Fprintf(&b, "\nkey %s, copies seen before the pass: %s", n, strings.Join(parts, ", "))
	}
	return b.String()
}
