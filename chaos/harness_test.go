package chaos

import (
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestScheduleIsSeeded(t *testing.T) {
	for _, name := range ScenarioNames() {
		sc := Scenarios[name]
		a, b := Schedule(sc, 42, time.Minute), Schedule(sc, 42, time.Minute)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: the same seed gave two schedules", name)
		}
		if c := Schedule(sc, 43, time.Minute); reflect.DeepEqual(a, c) && len(a) > 1 {
			t.Errorf("%s: seeds 42 and 43 gave the same schedule", name)
		}
		var spent time.Duration
		for _, f := range a {
			if sc.Faults[f.Kind] == 0 {
				t.Errorf("%s: fault %s is not in the scenario's mix", name, f.Kind)
			}
			if f.Gap < sc.Gap[0] || f.Gap > sc.Gap[1] {
				t.Errorf("%s: gap %v outside %v", name, f.Gap, sc.Gap)
			}
			if f.Kind == FaultStorageKill && (f.Count < 1 || f.Count > 2) {
				t.Errorf("%s: %d storage nodes at once: more than m", name, f.Count)
			}
			spent += f.Gap + f.Hold
			if f.Kind == FaultRollingRestart {
				spent += 20 * time.Second // eleven nodes, one at a time
			}
		}
		if spent < time.Minute/2 {
			t.Errorf("%s: the schedule covers %v of a minute", name, spent)
		}
	}
	if len(Schedule(Scenarios["mixed"], 7, 25*time.Minute)) < 150 {
		t.Error("a 25-minute mixed soak should hold hundreds of faults")
	}
}

func TestDevCommandLine(t *testing.T) {
	line := "=== 2026-11-27T21:30:00.047432222Z dev cluster: /tmp/bin/strata serve --roles meta --node-id m1 --data-dir /tmp/c/m1 --grpc-addr 127.0.0.1:45061 --raft-addr 127.0.0.1:34541 --dead-after 3s"
	argv, ok := parseDevCommandLine(line)
	if !ok || argv[0] != "/tmp/bin/strata" || argv[1] != "serve" || argv[len(argv)-1] != "3s" {
		t.Fatalf("parsed %q, %v", argv, ok)
	}
	for _, bad := range []string{"", "time=... msg=x", "=== 2026 chaos: restart #2: /tmp/bin/strata serve", "=== x dev cluster: strata version"} {
		if _, ok := parseDevCommandLine(bad); ok {
			t.Errorf("%q parsed as a command line", bad)
		}
	}
	// m1 bootstrapped without --join; once it has Raft state it joins the
	// others, as the dev cluster does.
	got := restartArgs(argv, true, []string{"127.0.0.1:1", "127.0.0.1:2"})
	if j := strings.Join(got[len(got)-2:], " "); j != "--join 127.0.0.1:1,127.0.0.1:2" {
		t.Errorf("restart of a bootstrapped meta node ends with %q", j)
	}
	if got := restartArgs(argv, false, []string{"127.0.0.1:1"}); !reflect.DeepEqual(got, argv) {
		t.Errorf("no Raft state: %q, want the command line unchanged", got)
	}
	storage := []string{"strata", "serve", "--roles", "storage", "--join", "127.0.0.1:1"}
	if got := restartArgs(storage, false, []string{"127.0.0.1:1"}); !reflect.DeepEqual(got, storage) {
		t.Errorf("storage node: %q", got)
	}
}

func TestPidAlive(t *testing.T) {
	if !pidAlive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if pidAlive(math.MaxInt32 - 1) {
		t.Error("a pid that cannot exist is alive")
	}
}

// tagOp builds a history entry; ret < 0 means ambiguous.
func tagOp(client int, kind, tag string, value int, result string, call, ret int64) TagOp {
	return TagOp{Client: client, Kind: kind, Tag: tag, Value: value, Result: result, Call: call, Return: ret}
}

func TestTagHistoryCheck(t *testing.T) {
	cases := []struct {
		name string
		ops  []TagOp
		want string
	}{
		{"sequential", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(1, "get", "a", 1, TagOK, 20, 30),
			tagOp(0, "delete", "a", 0, TagOK, 40, 50),
			tagOp(1, "get", "a", 0, TagAbsent, 60, 70),
		}, "ok"},
		{"stale read", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(0, "put", "a", 2, TagOK, 20, 30),
			tagOp(1, "get", "a", 1, TagOK, 40, 50),
		}, "illegal"},
		{"read of a deleted tag", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(0, "delete", "a", 0, TagOK, 20, 30),
			tagOp(1, "get", "a", 1, TagOK, 40, 50),
		}, "illegal"},
		{"delete says absent after a put", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(1, "delete", "a", 0, TagAbsent, 20, 30),
		}, "illegal"},
		{"ambiguous put seen later", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(0, "put", "a", 2, TagAmbiguous, 20, 30),
			tagOp(1, "get", "a", 1, TagOK, 40, 50),
			tagOp(1, "get", "a", 2, TagOK, 60, 70),
		}, "ok"},
		{"ambiguous put, then an older value", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(0, "put", "a", 2, TagAmbiguous, 20, 30),
			tagOp(1, "get", "a", 2, TagOK, 40, 50),
			tagOp(1, "get", "a", 1, TagOK, 60, 70),
		}, "illegal"},
		{"tags are independent", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(1, "put", "b", 2, TagOK, 0, 10),
			tagOp(0, "get", "b", 2, TagOK, 20, 30),
			tagOp(1, "get", "a", 1, TagOK, 20, 30),
		}, "ok"},
		{"failed reads say nothing", []TagOp{
			tagOp(0, "put", "a", 1, TagOK, 0, 10),
			tagOp(1, "get", "a", 0, TagFailed, 20, 30),
		}, "ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := CheckTagHistory(tc.ops, 10*time.Second, "")
			if res.Result != tc.want {
				t.Fatalf("%s, want %s (%+v)", res.Result, tc.want, res)
			}
		})
	}
	// The tags at fault are named, and can be described.
	ops := []TagOp{
		tagOp(0, "put", "a", 1, TagOK, 0, 10),
		tagOp(0, "put", "a", 2, TagOK, 20, 30),
		tagOp(1, "get", "a", 1, TagOK, 40, 50),
		tagOp(2, "put", "b", 3, TagOK, 0, 10),
	}
	if res := CheckTagHistory(ops, 10*time.Second, ""); len(res.IllegalTags) != 1 || res.IllegalTags[0] != "a" {
		t.Errorf("illegal tags %v, want [a]", res.IllegalTags)
	}
	d := DescribeTag(ops, "a", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if !strings.Contains(d, "get    1") || strings.Contains(d, "put    3") || !strings.Contains(d, "[00:00:00.000000, 00:00:00.000000]") {
		t.Errorf("description of tag a:\n%s", d)
	}

	// An ambiguous put nobody read is left out of the search.
	res := CheckTagHistory([]TagOp{
		tagOp(0, "put", "a", 1, TagOK, 0, 10),
		tagOp(0, "put", "a", 2, TagAmbiguous, 20, 30),
		tagOp(1, "get", "a", 1, TagOK, 40, 50),
	}, 10*time.Second, "")
	if res.Result != "ok" || res.Pruned != 1 || res.Ambiguous != 1 || res.Operations != 2 {
		t.Fatalf("pruning: %+v", res)
	}
}

func TestUnavailability(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	events := []FaultEvent{
		{Kind: FaultLeaderKill, Targets: []string{"m1"}, Start: at(100)},
		{Kind: FaultLeaderKill, Targets: []string{"m2"}, Start: at(1000)},
		{Kind: FaultPause, Targets: []string{"s1"}, Start: at(2000)},
		{Kind: FaultStorageKill, Start: at(2100)}, // skipped: no targets
		{Kind: FaultPause, Targets: []string{"s2"}, Start: at(5000)},
	}
	acks := []time.Time{at(50), at(100), at(400), at(2500), at(2600)}
	u := unavailability(events, acks)
	if got := u[FaultLeaderKill]; got.Faults != 2 || got.MaxMS != 1500 || got.MeanMS != 900 {
		t.Errorf("leader-kill: %+v", got)
	}
	if got := u[FaultPause]; got.Faults != 2 || got.MaxMS != 500 || got.NoPushAfter != 1 {
		t.Errorf("pause: %+v", got)
	}
	if _, ok := u[FaultStorageKill]; ok || events[3].UnavailableMS != -1 {
		t.Errorf("a skipped fault counted: %+v", u)
	}
	if events[0].UnavailableMS != 300 {
		t.Errorf("first fault: %v ms, want 300", events[0].UnavailableMS)
	}
}

func TestLiveBlobs(t *testing.T) {
	h := NewHistory()
	a, b, c := LiteralBlob([]byte("a")), LiteralBlob([]byte("b")), LiteralBlob([]byte("c"))
	for _, x := range []Blob{a, b, c} {
		h.AckBlob("r", x, StyleWhole)
	}
	m := ManifestOp{Repo: "r", Tag: "t", Digest: "sha256:m", Blobs: []string{a.Digest, b.Digest}}
	h.AckManifest(m)
	before := time.Now().Add(time.Second)
	if !h.BlobRequired("r", a.Digest, before) || h.BlobRequired("r", c.Digest, before) || h.BlobRequired("other", a.Digest, before) {
		t.Error("BlobRequired before the delete")
	}
	if got := len(h.Snapshot().LiveBlobs()); got != 2 {
		t.Errorf("%d live blobs, want 2", got)
	}
	h.AttemptDelete(m)
	if h.BlobRequired("r", a.Digest, before) || !h.Deleting("r", "t") {
		t.Error("a blob of a manifest being deleted is still required")
	}
	h.AckDelete(m)
	s := h.Snapshot()
	if len(s.LiveBlobs()) != 0 || len(s.DeletedMans) != 1 || len(s.AckedManifests) != 0 {
		t.Errorf("after the delete: %d live blobs, %d deleted, %d acknowledged manifests",
			len(s.LiveBlobs()), len(s.DeletedMans), len(s.AckedManifests))
	}
}

func TestReportSummary(t *testing.T) {
	r := &Report{Scenario: "leader-kill", Seed: 9, Pass: false, Lost: 0, Acknowledged: 12,
		Failures: []string{"something broke"}, Replay: "strata chaos run --seed 9"}
	r.Faults.ByKind = map[FaultKind]int{FaultLeaderKill: 3}
	r.Faults.Unavail = map[FaultKind]Unavailability{FaultLeaderKill: {Faults: 3, MaxMS: 1234}}
	s := r.Summary()
	for _, want := range []string{"FAIL", "leader-kill", "1234 ms", "acknowledged: 12   lost: 0", "something broke", "--seed 9"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
}

func TestFailpointExitInLog(t *testing.T) {
	start := "=== 2026-11-28T01:12:02Z chaos: restart #1: strata serve --roles meta   (environment: STRATA_FAILPOINTS=snapshot-restore=1*exit)\n"
	cases := []struct {
		log  string
		want bool
	}{
		{start + "failpoints: armed from STRATA_FAILPOINTS: snapshot-restore=1*exit\ntime=... msg=\"strata node started\"\nfailpoint snapshot-restore: exit\n", true},
		{start + "panic: runtime error\n", false},
		{"=== old start\nfailpoint upload-before-commit: exit\n" + start + "listen tcp: address already in use\n", false},
		{"[...]\nfailpoint repair-before-replace: exit\n", true},
	}
	for i, tc := range cases {
		if got := failpointExit(tc.log); got != tc.want {
			t.Errorf("case %d: failpointExit = %v, want %v", i, got, tc.want)
		}
	}
}
