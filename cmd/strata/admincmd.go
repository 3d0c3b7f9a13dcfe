package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// adminClient calls a frontend's admin API (/admin/v1/<Operation>).
type adminClient struct {
	server  string
	timeout time.Duration
}

func (a *adminClient) bind(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&a.server, "server", envOr("STRATA_URL", "http://127.0.0.1:5000"), "URL of a Strata frontend (its admin API answers loopback clients unless --admin-remote)")
	f.DurationVar(&a.timeout, "timeout", 10*time.Minute, "how long to wait")
}

// call posts req to op and decodes the answer into out (if non-nil).
func (a *adminClient) call(ctx context.Context, op string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(a.server, "/")+"/admin/v1/"+op, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &e) == nil && e.Type != "" {
			return fmt.Errorf("%s: %s", e.Type, e.Message)
		}
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func readPolicy(args []string) (string, error) {
	if len(args) < 2 || args[1] == "-" {
		b, err := io.ReadAll(os.Stdin)
		return string(b), err
	}
	b, err := os.ReadFile(args[1])
	return string(b), err
}

func newLifecycleCmd() *cobra.Command {
	a := &adminClient{}
	cmd := &cobra.Command{
		Use:   "lifecycle",
		Short: "Manage a repository's lifecycle policy (ECR's format and semantics)",
		Long: `Manage a repository's lifecycle policy, in ECR's JSON format:

  {"rules":[{"rulePriority":1,"description":"keep 10 releases",
             "selection":{"tagStatus":"tagged","tagPatternList":["v*"],
                          "countType":"imageCountMoreThan","countNumber":10},
             "action":{"type":"expire"}}]}

The leader applies every policy periodically (--lifecycle-interval); expired
images are deleted, and their blobs are garbage-collected after the grace
period.`,
	}
	a.bind(cmd)
	cmd.AddCommand(&cobra.Command{
		Use: "put REPO [FILE|-]", Short: "Set the policy (from FILE, or stdin)", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readPolicy(args)
			if err != nil {
				return err
			}
			var out map[string]any
			if err := a.call(cmd.Context(), "PutLifecyclePolicy", map[string]string{"repositoryName": args[0], "lifecyclePolicyText": text}, &out); err != nil {
				return err
			}
			fmt.Printf("lifecycle policy of %s set\n", args[0])
			return nil
		},
	}, &cobra.Command{
		Use: "get REPO", Short: "Print the policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				LifecyclePolicyText string `json:"lifecyclePolicyText"`
			}
			if err := a.call(cmd.Context(), "GetLifecyclePolicy", map[string]string{"repositoryName": args[0]}, &out); err != nil {
				return err
			}
			fmt.Println(out.LifecyclePolicyText)
			return nil
		},
	}, &cobra.Command{
		Use: "delete REPO", Short: "Remove the policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.call(cmd.Context(), "DeleteLifecyclePolicy", map[string]string{"repositoryName": args[0]}, nil); err != nil {
				return err
			}
			fmt.Printf("lifecycle policy of %s deleted\n", args[0])
			return nil
		},
	}, &cobra.Command{
		Use: "preview REPO [FILE|-]", Short: "List what a policy (FILE, or the repository's own) would expire now, and by which rule",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]string{"repositoryName": args[0]}
			if len(args) == 2 {
				text, err := readPolicy(args)
				if err != nil {
					return err
				}
				req["lifecyclePolicyText"] = text
			}
			if err := a.call(cmd.Context(), "StartLifecyclePolicyPreview", req, nil); err != nil {
				return err
			}
			var out struct {
				PreviewResults []struct {
					ImageDigest         string   `json:"imageDigest"`
					ImageTags           []string `json:"imageTags"`
					ImagePushedAt       float64  `json:"imagePushedAt"`
					AppliedRulePriority int      `json:"appliedRulePriority"`
				} `json:"previewResults"`
			}
			if err := a.call(cmd.Context(), "GetLifecyclePolicyPreview", map[string]string{"repositoryName": args[0]}, &out); err != nil {
				return err
			}
			if len(out.PreviewResults) == 0 {
				fmt.Println("nothing would expire")
				return nil
			}
			fmt.Printf("%-6s %-20s %-71s %s\n", "RULE", "PUSHED", "DIGEST", "TAGS")
			for _, r := range out.PreviewResults {
				pushed := time.Unix(0, int64(r.ImagePushedAt*1e9)).UTC().Format(time.DateTime)
				fmt.Printf("%-6d %-20s %-71s %s\n", r.AppliedRulePriority, pushed, r.ImageDigest, strings.Join(r.ImageTags, ","))
			}
			fmt.Printf("%d images would expire\n", len(out.PreviewResults))
			return nil
		},
	})
	return cmd
}

type gcStatsJSON struct {
	DurationMs       int64  `json:"duration_ms"`
	UploadsCancelled int64  `json:"uploads_cancelled"`
	BlobsCollected   int64  `json:"blobs_collected"`
	BytesReclaimed   uint64 `json:"bytes_reclaimed"`
	SegmentsDeleted  int64  `json:"segments_deleted"`
	ShardsSwept      int64  `json:"shards_swept"`
	Errors           int64  `json:"errors"`
	Phase            string `json:"phase"`
	Error            string `json:"error"`
}

func (s *gcStatsJSON) String() string {
	return fmt.Sprintf("%d blobs (%s) collected, %d orphan segments deleted, %d stray shards swept, %d idle uploads cancelled, %d errors, in %v",
		s.BlobsCollected, humanBytes(s.BytesReclaimed), s.SegmentsDeleted, s.ShardsSwept, s.UploadsCancelled, s.Errors,
		(time.Duration(s.DurationMs) * time.Millisecond).Round(time.Millisecond))
}

func newGCCmd() *cobra.Command {
	a := &adminClient{}
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Run or inspect the online garbage collector",
		Long: `The leader collects garbage continuously (--gc-interval): blobs no manifest has
referenced for longer than --gc-grace, the shards of orphaned segments, and
upload sessions idle past --upload-idle. Pushes never stop: a push that races
a collection fails with MANIFEST_BLOB_UNKNOWN and the client uploads again.`,
	}
	a.bind(cmd)
	var grace time.Duration
	var sweep, asJSON, wait bool
	run := &cobra.Command{
		Use:   "run",
		Short: "Start a collection now; with --wait, wait for it (progress on stderr) and print what it did",
		Example: `  strata gc run --wait
  strata gc run --grace 0s --sweep --wait --server http://127.0.0.1:5000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]any{"sweep": sweep, "wait": wait}
			if cmd.Flags().Changed("grace") {
				req["graceSeconds"] = grace.Seconds()
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			tty := wait && isTerminal(os.Stderr)
			go func() { // progress while the run goes on
				if !tty {
					return
				}
				t := time.NewTicker(500 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
					var st struct {
						Current *gcStatsJSON `json:"current"`
					}
					if a.call(ctx, "GetGarbageCollectionStatus", map[string]any{}, &st) == nil && st.Current != nil {
						fmt.Fprintf(os.Stderr, "\r%-8s blobs %d (%s)  segments %d  swept %d  ", st.Current.Phase,
							st.Current.BlobsCollected, humanBytes(st.Current.BytesReclaimed), st.Current.SegmentsDeleted, st.Current.ShardsSwept)
					}
				}
			}()
			var out gcStatsJSON
			err := a.call(ctx, "StartGarbageCollection", req, &out)
			cancel()
			if tty {
				fmt.Fprint(os.Stderr, "\r\033[K")
			}
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			if !wait {
				fmt.Println("garbage collection started on the leader; follow it with: strata gc status")
				return nil
			}
			fmt.Println(out.String())
			if out.Error != "" {
				return fmt.Errorf("the run had errors (retried next run): %s", out.Error)
			}
			return nil
		},
	}
	run.Flags().DurationVar(&grace, "grace", 0, "collect blobs unreferenced for longer than this (default: the server's --gc-grace)")
	run.Flags().BoolVar(&sweep, "sweep", false, "also list every storage node and delete shards nothing records (older than the sweep's safety age)")
	run.Flags().BoolVar(&asJSON, "json", false, "print the run's statistics as JSON")
	run.Flags().BoolVar(&wait, "wait", false, "wait for the run to finish, showing progress")
	status := &cobra.Command{
		Use: "status", Short: "Show the run in progress, the last run and what is pending", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st struct {
				Current        *gcStatsJSON `json:"current"`
				Last           *gcStatsJSON `json:"last"`
				PendingBlobs   int64        `json:"pending_blobs"`
				PendingOrphans int64        `json:"pending_orphans"`
			}
			if err := a.call(cmd.Context(), "GetGarbageCollectionStatus", map[string]any{}, &st); err != nil {
				return err
			}
			if asJSON {
				return printJSON(st)
			}
			if st.Current != nil {
				fmt.Printf("running (%s): %s\n", st.Current.Phase, st.Current)
			}
			if st.Last != nil {
				fmt.Printf("last run: %s\n", st.Last)
			} else {
				fmt.Println("last run: none since the leader started")
			}
			fmt.Printf("unreferenced blobs waiting for the grace period: %d; orphan segments: %d\n", st.PendingBlobs, st.PendingOrphans)
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(run, status)
	return cmd
}

func newRepoCmd() *cobra.Command {
	a := &adminClient{}
	cmd := &cobra.Command{Use: "repo", Short: "Create, describe and delete repositories; set tag immutability"}
	a.bind(cmd)
	var mutability string
	var exclusions []string
	var force, retainKey bool
	var dk, dm int
	var kmsKey string
	filters := func() []map[string]string {
		var out []map[string]string
		for _, e := range exclusions {
			out = append(out, map[string]string{"filterType": "WILDCARD", "filter": e})
		}
		return out
	}
	create := &cobra.Command{
		Use: "create REPO", Short: "Create a repository", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out any
			req := map[string]any{"repositoryName": args[0],
				"imageTagMutability": mutability, "imageTagMutabilityExclusionFilters": filters()}
			if dk > 0 {
				req["durabilityClass"] = map[string]int{"dataShards": dk, "parityShards": dm}
			}
			if kmsKey != "" {
				req["encryptionConfiguration"] = map[string]string{"encryptionType": "KMS", "kmsKey": kmsKey}
			}
			if err := a.call(cmd.Context(), "CreateRepository", req, &out); err != nil {
				return err
			}
			return printJSON(out)
		},
	}
	create.Flags().StringVar(&mutability, "tag-mutability", "", "MUTABLE, IMMUTABLE, MUTABLE_WITH_EXCLUSION or IMMUTABLE_WITH_EXCLUSION")
	create.Flags().StringSliceVar(&exclusions, "exclude", nil, "wildcard filters naming the tags that are the exception")
	create.Flags().IntVar(&dk, "k", 0, "durability class: data shards of this repository's blobs (default: the cluster's geometry)")
	create.Flags().IntVar(&dm, "m", 0, "durability class: parity shards (with --k)")
	create.Flags().StringVar(&kmsKey, "kms-key", "", "encrypt this repository under a key of its own (ECR's encryption type KMS): a keyring key, created if missing, or a --kms-plugin NAME; fixed at creation")
	durable := &cobra.Command{
		Use: "durability REPO K M", Short: "Set the durability class (erasure geometry k+m) of a repository's new blobs; 0 0 for the cluster's",
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k, m int
			if _, err := fmt.Sscan(args[1], &k); err != nil {
				return fmt.Errorf("K: %w", err)
			}
			if _, err := fmt.Sscan(args[2], &m); err != nil {
				return fmt.Errorf("M: %w", err)
			}
			var out any
			if err := a.call(cmd.Context(), "PutDurabilityClass", map[string]any{"repositoryName": args[0],
				"durabilityClass": map[string]int{"dataShards": k, "parityShards": m}}, &out); err != nil {
				return err
			}
			return printJSON(out)
		},
	}
	mut := &cobra.Command{
		Use: "immutability REPO MODE", Short: "Set tag mutability (MUTABLE, IMMUTABLE, *_WITH_EXCLUSION with --exclude)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out any
			if err := a.call(cmd.Context(), "PutImageTagMutability", map[string]any{"repositoryName": args[0],
				"imageTagMutability": args[1], "imageTagMutabilityExclusionFilters": filters()}, &out); err != nil {
				return err
			}
			return printJSON(out)
		},
	}
	mut.Flags().StringSliceVar(&exclusions, "exclude", nil, "wildcard filters naming the tags that are the exception")
	describe := &cobra.Command{
		Use: "describe [REPO...]", Short: "Describe repositories (all when none named)",
		RunE: func(cmd *cobra.Command, args []string) error {
			var out any
			if err := a.call(cmd.Context(), "DescribeRepositories", map[string]any{"repositoryNames": args}, &out); err != nil {
				return err
			}
			return printJSON(out)
		},
	}
	del := &cobra.Command{
		Use: "delete REPO", Short: "Delete a repository (--force when it holds images)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				KeyDestroyed string `json:"keyDestroyed"`
			}
			if err := a.call(cmd.Context(), "DeleteRepository", map[string]any{"repositoryName": args[0], "force": force, "retainKey": retainKey}, &out); err != nil {
				return err
			}
			fmt.Printf("deleted %s\n", args[0])
			if out.KeyDestroyed != "" {
				fmt.Printf("destroyed its key %q: its blobs can no longer be decrypted anywhere, shards on disk included\n", out.KeyDestroyed)
			}
			return nil
		},
	}
	del.Flags().BoolVar(&force, "force", false, "delete the repository's images too")
	del.Flags().BoolVar(&retainKey, "retain-key", false, "keep the repository's own key (by default a keyring key used by no other repository is destroyed: crypto-shredding)")
	cmd.AddCommand(create, mut, durable, describe, del)
	return cmd
}
