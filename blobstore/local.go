package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

var (
	// ErrStoreLocked is returned by OpenLocal when another store has the directory open.
	ErrStoreLocked = errors.New("blobstore: directory in use by another store")
	// ErrNodeMismatch is returned by OpenLocal when the directory belongs to another node id.
	ErrNodeMismatch = errors.New("blobstore: directory belongs to another node")
)

// The on-disk layout of a LocalStore rooted at dir:
//
//	dir/
//	├── LOCK                       flock(2)ed while a store has dir open
//	├── NODE                       the node id dir belongs to, checked on open
//	├── staging/                   shards being written; emptied on open
//	│   └── <segment>.<index>.<random>
//	└── shards/
//	    ├── 3f/                    the first two characters of the segment id
//	    │   ├── 3f9c…e1.0          a shard file: 64-byte header, then the payload
//	    │   ├── 3f9c…e1.4          (see the format in shard.go)
//	    │   └── …
//	    └── a0/
//	        └── …
//
// staging/ and shards/ are on the same filesystem, so a shard is written in
// staging, fsynced, renamed into shards/ and made durable by fsyncing its
// directory: a reader never sees a partial shard, and a crash leaves at most
// garbage in staging.
const (
	lockFile   = "LOCK"
	nodeFile   = "NODE"
	stagingDir = "staging"
	shardsDir  = "shards"
)

// LocalStore is a ShardStore on a local filesystem. Open it with OpenLocal.
type LocalStore struct {
	nodeID  string
	dir     string
	shards  string // dir/shards
	staging string // dir/staging
	lock    *os.File
	closed  atomic.Bool
	// noDirect: the filesystem refused direct I/O; write through the page
	// cache.
	noDirect atomic.Bool

	// Running totals for Usage, counted on open and kept up to date by Put
	// and Delete (approximate under concurrent writes of the same shard).
	count atomic.Int64
	used  atomic.Int64
}

var _ ShardReaderInto = (*LocalStore)(nil)

// OpenLocal opens (creating if needed) the shard directory dir of node
// nodeID. It takes an exclusive lock on dir, refuses a directory that belongs
// to another node id, empties the staging area left by a crash and counts the
// shards present.
func OpenLocal(nodeID, dir string) (*LocalStore, error) {
	if nodeID == "" {
		return nil, errors.New("blobstore: empty node id")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("blobstore: open %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("blobstore: open %s: %w", dir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrStoreLocked, dir)
		}
		return nil, fmt.Errorf("blobstore: lock %s: %w", dir, err)
	}
	s := &LocalStore{
		nodeID:  nodeID,
		dir:     dir,
		shards:  filepath.Join(dir, shardsDir),
		staging: filepath.Join(dir, stagingDir),
		lock:    lock,
	}
	if err := s.init(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *LocalStore) init() error {
	// The directory is bound to one node id: shard refs name the node, so
	// serving these shards under another id would make them unfindable.
	path := filepath.Join(s.dir, nodeFile)
	switch b, err := os.ReadFile(path); {
	case err == nil:
		if got := string(bytes.TrimSpace(b)); got != s.nodeID {
			return fmt.Errorf("%w: %s belongs to %q, not %q", ErrNodeMismatch, s.dir, got, s.nodeID)
		}
	case errors.Is(err, fs.ErrNotExist):
		if err := writeFileDurable(path, []byte(s.nodeID+"\n")); err != nil {
			return fmt.Errorf("blobstore: write %s: %w", path, err)
		}
	default:
		return fmt.Errorf("blobstore: read %s: %w", path, err)
	}
	if err := os.RemoveAll(s.staging); err != nil {
		return fmt.Errorf("blobstore: clean staging: %w", err)
	}
	for _, d := range []string{s.staging, s.shards} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("blobstore: open %s: %w", s.dir, err)
		}
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("blobstore: sync %s: %w", s.dir, err)
	}
	return s.countShards()
}

// countShards sets the Usage totals from the files under shards/.
func (s *LocalStore) countShards() error {
	var n, used int64
	err := filepath.WalkDir(s.shards, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n++
				used += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("blobstore: scan %s: %w", s.shards, err)
	}
	s.count.Store(n)
	s.used.Store(used)
	return nil
}

// Close releases the directory lock. Later calls fail with ErrClosed.
func (s *LocalStore) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	return s.lock.Close() // closing the descriptor drops the flock
}

// Dir returns the directory the store was opened on.
func (s *LocalStore) Dir() string { return s.dir }

// NodeID implements ShardStore.
func (s *LocalStore) NodeID() string { return s.nodeID }

// ShardPath returns the file that holds (or would hold) shard id, or "" for
// an invalid id.
func (s *LocalStore) ShardPath(id ShardID) string {
	if id.Validate() != nil {
		return ""
	}
	return filepath.Join(s.shards, id.Segment[:2], id.String())
}

func (s *LocalStore) check(ctx context.Context, id *ShardID) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if id != nil {
		return id.Validate()
	}
	return nil
}

// Put implements ShardStore: staging file, fsync, rename, fsync directory.
//
// A LocalStore trusts sum: its callers are the
// shard server, which checks what arrives over the network before it calls
// Put, and in-process pipelines that have just computed sum from the same
// bytes. Hashing them again here would double the checksum cost of every
// write for nothing; a wrong sum would still be caught by every reader and by
// the scrubber, because the header records it.
func (s *LocalStore) Put(ctx context.Context, id ShardID, data []byte, sum [32]byte) error {
	if err := s.check(ctx, &id); err != nil {
		return err
	}
	prefix := filepath.Join(s.shards, id.Segment[:2])
	switch err := os.Mkdir(prefix, 0o755); {
	case err == nil:
		if err := syncDir(s.shards); err != nil {
			return fmt.Errorf("blobstore: put %s: %w", id, err)
		}
	case !errors.Is(err, fs.ErrExist):
		return putError(id, err)
	}

	hdr := encodeShardHeader(shardHeader{Index: id.Index, Length: uint64(len(data)), Sum: sum})
	tmp, err := s.writeStaging(id, hdr[:], data)
	if err != nil && tmp == "" {
		return putError(id, err)
	}
	final := filepath.Join(prefix, id.String())
	var old int64 = -1
	if err == nil {
		if fi, serr := os.Lstat(final); serr == nil {
			old = fi.Size()
		}
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return putError(id, err)
	}
	size := int64(shardHeaderSize + len(data))
	if old >= 0 {
		s.used.Add(size - old)
	} else {
		s.count.Add(1)
		s.used.Add(size)
	}
	if err := syncDir(prefix); err != nil {
		return fmt.Errorf("blobstore: put %s: %w", id, err)
	}
	return nil
}

// directMin: payloads at least this long are written with direct I/O.
// Smaller ones go through the page cache, where the copy costs little.
const directMin = 64 << 10

// directAlign is the alignment direct I/O needs of buffers, file offsets
// and lengths (the logical block size of any common device, or a multiple).
const directAlign = 4096

// writeStaging writes the shard file (hdr, then data) to a new file in the
// staging directory and fsyncs it. It returns the file's name, also with an
// error when the file was created (the caller removes it).
//
// A large shard is written with O_DIRECT: from a page-aligned buffer
// straight to the device, without copying it into the page cache first.
// Every Put fsyncs before it acknowledges, so the page cache would only hold
// the bytes until they are written; copying them there cost more CPU than
// anything else on a push (up to 2 s of system time per GB on virtualised
// disks, against 0.4 for direct I/O and a copy into the aligned buffer).
// Direct I/O needs lengths in whole blocks: the file is written padded with
// zeros and then cut to its size, and the fsync makes both durable. A
// filesystem that refuses O_DIRECT (tmpfs before Linux 6.6) turns it off for the store.
func (s *LocalStore) writeStaging(id ShardID, hdr, data []byte) (string, error) {
	if len(data) >= directMin && !s.noDirect.Load() {
		name, err := s.writeDirect(id, hdr, data)
		if err == nil || !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, syscall.EINVAL) {
			return name, err
		}
		s.noDirect.Store(true)
		if name != "" {
			os.Remove(name)
		}
	}
	f, err := os.CreateTemp(s.staging, id.String()+".*")
	if err != nil {
		return "", err
	}
	err = writeAll(f, hdr, data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return f.Name(), err
}

// writeDirect is writeStaging with O_DIRECT.
func (s *LocalStore) writeDirect(id ShardID, hdr, data []byte) (string, error) {
	size := len(hdr) + len(data)
	padded := (size + directAlign - 1) / directAlign * directAlign
	buf, release := alignedBuffer(padded)
	defer release()
	copy(buf, hdr)
	copy(buf[len(hdr):], data)
	clear(buf[size:])

	var f *os.File
	var name string
	for range 10 {
		name = filepath.Join(s.staging, id.String()+"."+strconv.FormatUint(rand.Uint64(), 36))
		var err error
		if f, err = openDirect(name); err == nil {
			break
		} else if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	if f == nil {
		return "", fmt.Errorf("no free staging name for %s", id)
	}
	_, err := f.Write(buf)
	if err == nil {
		err = f.Truncate(int64(size))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return name, err
}

// alignedBuffers pools page-aligned buffers by size class (whole multiples
// of alignedClass): those of writeDirect and of pooled direct reads, and the
// buffers segments are read into (segBuf).
var alignedBuffers sync.Map // int -> *sync.Pool of *[]byte

const alignedClass = 64 << 10

// alignedBuffer returns a directAlign-aligned buffer of n bytes and the
// function that gives it back.
func alignedBuffer(n int) ([]byte, func()) {
	class := (n + alignedClass - 1) / alignedClass
	p, ok := alignedBuffers.Load(class)
	if !ok {
		p, _ = alignedBuffers.LoadOrStore(class, &sync.Pool{New: func() any {
			b := make([]byte, class*alignedClass+directAlign)
			return &b
		}})
	}
	pool := p.(*sync.Pool)
	raw := pool.Get().(*[]byte)
	return alignIn(*raw, n), func() { pool.Put(raw) }
}

// alignedFresh returns a new directAlign-aligned buffer of n bytes, for a
// caller that keeps it.
func alignedFresh(n int) []byte { return alignIn(make([]byte, n+directAlign), n) }

// alignIn returns the first n bytes of raw (at least n+directAlign long)
// that start on a directAlign boundary, with no capacity beyond them.
func alignIn(raw []byte, n int) []byte {
	off := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(raw))) % directAlign); r != 0 {
		off = directAlign - r
	}
	return raw[off : off+n : off+n]
}

// putError wraps an error of Put, as ErrNoSpace when the filesystem is full
// or the store over its quota.
func putError(id ShardID, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: put %s: %w", ErrNoSpace, id, err)
	}
	return fmt.Errorf("blobstore: put %s: %w", id, err)
}

// Get implements ShardStore: the payload in a buffer of its own.
func (s *LocalStore) Get(ctx context.Context, id ShardID) ([]byte, error) {
	return s.read(ctx, id, func(n int) []byte { return make([]byte, n) }, alignedFresh)
}

// GetInto implements ShardReaderInto. The header is checked (its CRC, index
// and length); the payload is not hashed: the reader checks it end to end
// (see ShardStore.Get), and Verify checks it at rest. The payload goes to
// dst itself, so it is read through the page cache.
func (s *LocalStore) GetInto(ctx context.Context, id ShardID, dst []byte) ([]byte, error) {
	return s.read(ctx, id, func(n int) []byte {
		if cap(dst) < n {
			return make([]byte, n)
		}
		return dst[:n]
	}, nil)
}

// GetPooled is Get into a pooled buffer, which release gives back (once
// nothing reads the payload any more). The shard server reads every shard it
// sends this way: fresh buffers of shard size made its reads cost page faults,
// clearing and collections.
func (s *LocalStore) GetPooled(ctx context.Context, id ShardID) (data []byte, release func(), err error) {
	var rel func()
	pooled := func(n int) []byte {
		if rel != nil { // a direct read refused after it took a buffer
			rel()
		}
		var b []byte
		b, rel = alignedBuffer(n)
		return b
	}
	if data, err = s.read(ctx, id, pooled, pooled); err != nil {
		if rel != nil {
			rel()
		}
		return nil, nil, err
	}
	return data, rel, nil // read succeeds only after alloc
}

// read reads the payload of id. A large shard (directMin or more) is read
// whole with direct I/O into a buffer from direct, when it is not nil
// (page-aligned, of the file's size rounded up to directAlign): the payload
// starts shardHeaderSize bytes into it. Reads through the page cache cost a
// copy out of it on every read (a sixth of `--dev`'s CPU on pulls of
// distinct blobs) and keep in memory what the frontends' segment caches
// already keep decoded; large shards are written with direct I/O for the
// same reason. Other shards, and every shard on a filesystem that refuses
// direct I/O, are read through the page cache into a buffer of the
// payload's size from alloc.
func (s *LocalStore) read(ctx context.Context, id ShardID, alloc, direct func(n int) []byte) ([]byte, error) {
	if err := s.check(ctx, &id); err != nil {
		return nil, err
	}
	f, err := os.Open(s.ShardPath(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s on %s", ErrShardNotFound, id, s.nodeID)
		}
		return nil, fmt.Errorf("blobstore: get %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("blobstore: get %s: %w", id, err)
	}
	if direct != nil && s.useDirect(f, fi.Size()) {
		data, err := s.readWhole(f, id, fi.Size(), direct)
		if errors.Is(err, syscall.EINVAL) { // direct I/O refused after all
			s.noDirect.Store(true)
			return s.read(ctx, id, alloc, nil)
		}
		return data, err
	}
	var hb [shardHeaderSize]byte
	n, err := io.ReadFull(f, hb[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("blobstore: get %s: %w", id, err)
	}
	h, err := decodeShardHeader(hb[:n])
	if err == nil {
		err = checkHeader(h, id, fi.Size())
	}
	if err != nil {
		return nil, fmt.Errorf("get %s on %s: %w", id, s.nodeID, err)
	}
	dst := alloc(int(h.Length))
	if _, err := io.ReadFull(f, dst); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: get %s on %s: file shorter than its header says", ErrShardCorrupt, id, s.nodeID)
		}
		return nil, fmt.Errorf("blobstore: get %s: %w", id, err)
	}
	return dst, nil
}

// useDirect reports whether f, a shard file of size bytes not read yet, is
// to be read with direct I/O, and turns direct I/O on for it if so. The
// first refusal turns direct I/O off for the store.
func (s *LocalStore) useDirect(f *os.File, size int64) bool {
	if size-shardHeaderSize < directMin || s.noDirect.Load() {
		return false
	}
	if err := setDirect(f); err != nil {
		s.noDirect.Store(true)
		return false
	}
	return true
}

// readWhole reads f, a shard file of size bytes opened for direct I/O,
// whole into a buffer from alloc and returns its payload.
func (s *LocalStore) readWhole(f *os.File, id ShardID, size int64, alloc func(n int) []byte) ([]byte, error) {
	buf := alloc(int((size + directAlign - 1) / directAlign * directAlign))
	n, err := io.ReadFull(f, buf)
	switch {
	case err != nil && err != io.ErrUnexpectedEOF: // the last block is short
		return nil, fmt.Errorf("blobstore: get %s: %w", id, err)
	case int64(n) < size:
		return nil, fmt.Errorf("%w: get %s on %s: read %d of %d bytes", ErrShardCorrupt, id, s.nodeID, n, size)
	}
	h, err := decodeShardHeader(buf[:shardHeaderSize])
	if err == nil {
		err = checkHeader(h, id, size)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s on %s: %w", id, s.nodeID, err)
	}
	return buf[shardHeaderSize : shardHeaderSize+int(h.Length)], nil
}

// checkHeader checks a decoded header against the shard it should describe
// and the size of its file.
func checkHeader(h shardHeader, id ShardID, fileSize int64) error {
	if h.Index != id.Index {
		return fmt.Errorf("%w: header names index %d", ErrShardCorrupt, h.Index)
	}
	if want := uint64(fileSize - shardHeaderSize); h.Length != want {
		return fmt.Errorf("%w: header says %d payload bytes, file has %d", ErrShardCorrupt, h.Length, want)
	}
	return nil
}

// Delete implements ShardStore.
func (s *LocalStore) Delete(ctx context.Context, id ShardID) error {
	if err := s.check(ctx, &id); err != nil {
		return err
	}
	path := s.ShardPath(id)
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("blobstore: delete %s: %w", id, err)
	}
	if fi != nil {
		s.count.Add(-1)
		s.used.Add(-fi.Size())
	}
	return nil
}

// Stat implements ShardStore: it reads only the header.
func (s *LocalStore) Stat(ctx context.Context, id ShardID) (ShardInfo, error) {
	if err := s.check(ctx, &id); err != nil {
		return ShardInfo{}, err
	}
	info, err := statFile(s.ShardPath(id), id)
	if errors.Is(err, fs.ErrNotExist) {
		return ShardInfo{}, fmt.Errorf("%w: %s on %s", ErrShardNotFound, id, s.nodeID)
	}
	return info, err
}

// statFile reads the header of the shard file at path. On a damaged header
// it returns the error together with what it could learn (ID and a Size from
// the file size), which List reports.
func statFile(path string, id ShardID) (ShardInfo, error) {
	info := ShardInfo{ID: id}
	f, err := os.Open(path)
	if err != nil {
		return info, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return info, fmt.Errorf("blobstore: stat %s: %w", id, err)
	}
	info.Size = max(fi.Size()-shardHeaderSize, 0)
	var buf [shardHeaderSize]byte
	if _, err := io.ReadFull(f, buf[:]); err != nil {
		return info, fmt.Errorf("%w: stat %s: %v", ErrShardCorrupt, id, err)
	}
	h, err := decodeShardHeader(buf[:])
	if err == nil {
		err = checkHeader(h, id, fi.Size())
	}
	if err != nil {
		return info, fmt.Errorf("stat %s: %w", id, err)
	}
	info.Sum = h.Sum
	return info, nil
}

// List implements ShardStore. It relies on the layout: every name in
// shards/xy/ starts with xy, so walking the sorted directories in order and
// the sorted names within each gives all names in sorted order.
func (s *LocalStore) List(ctx context.Context, after string, limit int) ([]ShardInfo, error) {
	if err := s.check(ctx, nil); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = DefaultListLimit
	}
	prefixes, err := os.ReadDir(s.shards)
	if err != nil {
		return nil, fmt.Errorf("blobstore: list: %w", err)
	}
	var out []ShardInfo
	for _, p := range prefixes {
		name := p.Name()
		if !p.IsDir() || len(name) != 2 || len(after) >= 2 && name < after[:2] {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(s.shards, name))
		if err != nil {
			return nil, fmt.Errorf("blobstore: list: %w", err)
		}
		for _, e := range entries {
			if e.Name() <= after || !e.Type().IsRegular() {
				continue
			}
			id, err := ParseShardID(e.Name())
			if err != nil || id.Segment[:2] != name {
				continue // not a shard file
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			info, err := statFile(filepath.Join(s.shards, name, e.Name()), id)
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted meanwhile
			}
			out = append(out, info)
			if len(out) == limit {
				return out, nil
			}
		}
	}
	return out, nil
}

// Usage implements ShardStore, with the filesystem's numbers from statfs(2).
func (s *LocalStore) Usage(ctx context.Context) (Usage, error) {
	if err := s.check(ctx, nil); err != nil {
		return Usage{}, err
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return Usage{}, fmt.Errorf("blobstore: statfs %s: %w", s.dir, err)
	}
	return Usage{
		Shards:   s.count.Load(),
		Used:     s.used.Load(),
		Capacity: st.Blocks * uint64(st.Bsize),
		Free:     st.Bavail * uint64(st.Bsize),
	}, nil
}

// writeAll writes the buffers to f in order.
func writeAll(f *os.File, bufs ...[]byte) error {
	for _, b := range bufs {
		if _, err := f.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// syncDir fsyncs a directory, making the creation, removal or renaming of
// its entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFileDurable writes a small file atomically and durably.
func writeFileDurable(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}
