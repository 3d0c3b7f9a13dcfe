package metastore

import (
	"errors"
	"testing"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

func wk(name, version, ct string) *pb.WrappedKey {
	return &pb.WrappedKey{KeyName: name, KeyVersion: version, Ciphertext: []byte(ct)}
}

func keyCmd(changes ...*pb.KeyChange) *pb.Command {
	return &pb.Command{Op: &pb.Command_SetWrappedKeys{SetWrappedKeys: &pb.SetWrappedKeys{Changes: changes}}}
}

// Wrapped keys: listed in pages, swapped by compare-and-set, a copy added
// for a repository with another key (and the need for it noted and then
// cleared), and manifest keys rewrapped together with their referrers.
func TestWrappedKeys(t *testing.T) {
	h := newHarness(t)
	enc := commitCmd("a", dg(1), 10, seg("s1", 10))
	enc.GetCommitBlob().Key = wk("default", "1", "blob1-v1")
	h.must(enc)
	h.must(commitCmd("a", dg(2), 10, seg("s2", 10))) // in the clear: never listed
	put := manifestCmd("a", dg(3), []string{"v1"}, dg(1))
	put.GetPutManifest().Key, put.GetPutManifest().Size = wk("default", "1", "man-v1"), 19
	h.must(put)
	sig := manifestCmd("a", dg(4), nil, dg(1))
	sig.GetPutManifest().Subject, sig.GetPutManifest().Key = dg(3), wk("default", "1", "sig-v1")
	sig.GetPutManifest().AnnotationsJson = []byte("sealed")
	h.must(sig)
	h.must(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u1", Repo: "a", Key: wk("default", "1", "up-v1")}}})

	// A repository with a key of its own mounts the blob, and pushes it
	// again: a copy under its key is needed, once.
	h.must(&pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{Repo: "b", EncryptionType: EncryptionKMS, KmsKey: "team-b"}}})
	h.must(&pb.Command{Op: &pb.Command_MountBlob{MountBlob: &pb.MountBlob{Repo: "b", Digest: dg(1), From: "a", KeyName: "team-b"}}})
	again := commitCmd("c", dg(1), 10, seg("s9", 10))
	again.GetCommitBlob().Key = wk("team-c", "1", "other")
	h.must(again)

	all := func(needsOnly bool, page int) []KeyItem {
		var out []KeyItem
		cursor := ""
		for {
			items, next, err := h.st.WrappedKeys(cursor, page, needsOnly)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, items...)
			if next == "" {
				return out
			}
			cursor = next
		}
	}
	for _, page := range []int{1, 2, 100} {
		items := all(false, page)
		kinds := map[string]int{}
		for _, it := range items {
			kinds[it.Kind]++
		}
		if len(items) != 6 || kinds[KeyKindBlob] != 1 || kinds[KeyKindNeed] != 2 || kinds[KeyKindManifest] != 2 || kinds[KeyKindUpload] != 1 {
			t.Fatalf("page %d: %d items %v", page, len(items), kinds)
		}
	}
	needs := all(true, 1)
	if len(needs) != 2 || needs[0].Need != "team-b" || needs[1].Need != "team-c" || needs[0].ID != dg(1) {
		t.Fatalf("needs = %+v", needs)
	}

	// Rotation: stale copies swapped; a change whose old copy is gone is
	// skipped.
	h.must(keyCmd(
		&pb.KeyChange{Kind: KeyKindBlob, Id: dg(1), Old: wk("default", "1", "blob1-v1"), New: wk("default", "2", "blob1-v2")},
		&pb.KeyChange{Kind: KeyKindManifest, Repo: "a", Id: dg(4), Old: wk("default", "1", "sig-v1"), New: wk("default", "2", "sig-v2")},
		&pb.KeyChange{Kind: KeyKindUpload, Id: "u1", Old: wk("default", "1", "up-v1"), New: wk("default", "2", "up-v2")},
		&pb.KeyChange{Kind: KeyKindManifest, Repo: "a", Id: dg(3), Old: wk("default", "1", "not-the-stored-one"), New: wk("default", "2", "x")},
		&pb.KeyChange{Kind: KeyKindBlob, Id: dg(99), Old: wk("default", "1", "gone"), New: wk("default", "2", "y")},
	))
	l, _ := h.st.Blob(dg(1))
	if len(l.Keys) != 1 || string(l.Keys[0].Ciphertext) != "blob1-v2" {
		t.Fatalf("blob keys %v", l.Keys)
	}
	if m, _ := h.st.Manifest("a", dg(3)); string(m.Key.Ciphertext) != "man-v1" {
		t.Fatalf("manifest key changed by a stale compare-and-set: %v", m.Key)
	}
	refs, _ := h.st.Referrers("a", dg(3))
	if len(refs) != 1 || string(refs[0].Key.Ciphertext) != "sig-v2" {
		t.Fatalf("referrer key not rewrapped with its manifest: %v", refs)
	}
	if u, _ := h.st.Upload("u1"); string(u.Key.Ciphertext) != "up-v2" {
		t.Fatalf("upload key %v", u.Key)
	}

	// One more copy for team-b clears its need; adding it twice adds one.
	add := &pb.KeyChange{Kind: KeyKindBlob, Id: dg(1), New: wk("team-b", "1", "blob1-b")}
	h.must(keyCmd(add))
	h.must(keyCmd(add))
	if l, _ := h.st.Blob(dg(1)); len(l.Keys) != 2 || l.Keys[1].KeyName != "team-b" {
		t.Fatalf("blob keys %v", l.Keys)
	}
	if needs := all(true, 10); len(needs) != 1 || needs[0].Need != "team-c" {
		t.Fatalf("needs after adding team-b = %+v", needs)
	}

	// A need for a key that was destroyed is dropped.
	h.must(keyCmd(&pb.KeyChange{Kind: KeyKindNeed, Id: dg(1), Old: &pb.WrappedKey{KeyName: "team-c"}}))
	if needs := all(true, 10); len(needs) != 0 {
		t.Fatalf("needs after dropping team-c = %+v", needs)
	}
	h.refuse(keyCmd(&pb.KeyChange{Kind: KeyKindNeed, Id: dg(1)}), ErrCommandInvalid)

	// Bad changes are refused and change nothing.
	h.refuse(keyCmd(&pb.KeyChange{Kind: KeyKindManifest, Repo: "a", Id: dg(3), New: wk("k", "1", "z")}), ErrCommandInvalid)
	h.refuse(keyCmd(&pb.KeyChange{Kind: "tag", Id: "x", Old: wk("k", "1", "z"), New: wk("k", "1", "z")}), ErrCommandInvalid)
	h.refuse(keyCmd(&pb.KeyChange{Kind: KeyKindBlob, Id: dg(1)}), ErrCommandInvalid)
	h.refuse(&pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{Repo: "d", EncryptionType: EncryptionKMS}}}, ErrCommandInvalid)
	h.refuse(&pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{Repo: "d", EncryptionType: "ROT13"}}}, ErrCommandInvalid)

	// Collecting the blob drops what it still needed.
	h.must(again) // team-c needs a copy again
	h.must(&pb.Command{Op: &pb.Command_DeleteRepository{DeleteRepository: &pb.DeleteRepository{Repo: "a", Force: true}}})
	for _, r := range []string{"b", "c"} {
		h.must(&pb.Command{Op: &pb.Command_UnlinkBlob{UnlinkBlob: &pb.UnlinkBlob{Repo: r, Digest: dg(1)}}})
	}
	h.must(&pb.Command{Op: &pb.Command_CollectBlob{CollectBlob: &pb.CollectBlob{Digest: dg(1), CutoffUnixNano: h.now + 1e12}}})
	if _, err := h.st.Blob(dg(1)); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("blob not collected: %v", err)
	}
	if needs := all(true, 10); len(needs) != 0 {
		t.Fatalf("needs of a collected blob remain: %+v", needs)
	}
}

// ManifestByTag resolves a tag and reads its manifest in one read.
func TestManifestByTag(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("a", dg(1), 10, seg("s1", 10)))
	h.must(manifestCmd("a", dg(2), []string{"v1"}, dg(1)))
	m, err := h.st.ManifestByTag("a", "v1")
	if err != nil || m.Digest != dg(2) {
		t.Fatalf("ManifestByTag = %v, %v", m, err)
	}
	if _, err := h.st.ManifestByTag("a", "nope"); !errors.Is(err, ErrTagUnknown) {
		t.Fatalf("unknown tag: %v", err)
	}
	h.must(&pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{Repo: "a", Digest: dg(2)}}})
	if _, err := h.st.ManifestByTag("a", "v1"); !errors.Is(err, ErrTagUnknown) && !errors.Is(err, ErrManifestUnknown) {
		t.Fatalf("tag of a deleted manifest: %v", err)
	}
}
