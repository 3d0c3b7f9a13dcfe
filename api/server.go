package api

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/strata-registry/strata/api/oci"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/keys"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Metadata is the metadata service as the HTTP layer sees it: proposals
// replicated through Raft, and reads. Tag, listing, repository and upload
// reads are linearizable; digest-addressed reads may come from any replica
// but never report as absent what an acknowledged write created.
type Metadata interface {
	Propose(ctx context.Context, cmd *pb.Command) error
	Blob(ctx context.Context, dgst string) (*pb.BlobLayout, error)
	RepoBlob(ctx context.Context, repo, dgst string) (*pb.BlobLayout, error)
	BlobRepositories(ctx context.Context, dgst string, limit int) ([]string, error)
	Upload(ctx context.Context, id string) (*pb.Upload, error)
	Manifest(ctx context.Context, repo, dgst string) (*pb.ManifestRecord, error)
	ManifestByTag(ctx context.Context, repo, tag string) (*pb.ManifestRecord, error)
	Tag(ctx context.Context, repo, tag string) (*pb.TagRecord, error)
	Repository(ctx context.Context, repo string) (*pb.Repository, error)
	Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error)
	Repositories(ctx context.Context, last string, n int) ([]string, bool, error)
	Referrers(ctx context.Context, repo, subject string) ([]*pb.Descriptor, error)
}

// Config configures the HTTP layer.
type Config struct {
	// MaxListPage caps n on tag and catalog listings.
	MaxListPage int
	// StrictManifests refuses image manifests whose layers are not all in
	// the repository. Off by default: sparse manifests (layers pushed
	// elsewhere or never) are accepted, except layers the repository
	// deleted. The config blob and index children are handled the same way
	// in both modes (config required, children optional).
	StrictManifests bool
	// RequestTimeout bounds the metadata work of a request that does not
	// stream a body (proposals, with their retries through an election).
	// Default 10s.
	RequestTimeout time.Duration
	// Keys, when set, encrypts every blob at rest under its own data key,
	// wrapped by the key-encryption key KeyName (default keys.DefaultKeyName).
	Keys    keys.Provider
	KeyName string
	// KeyManager, when the keys are Strata's own (a keyring), lets the
	// admin API create, rotate, retire and destroy them.
	KeyManager keys.Manager
	// MaxDataRequests bounds the requests that move blob bytes at once (blob
	// GETs and upload bodies). Beyond it, clients get 429 TOOMANYREQUESTS
	// with Retry-After. Default 256. The memory of blob reads is bounded in
	// bytes by the blob store's read budget (blobstore.Config.ReadBudget): a
	// blob GET whose first segment gets no read memory within the same
	// short wait gets the same 429.
	MaxDataRequests int
	// UploadIdle is how long an upload session may go untouched (the
	// collector cancels recorded ones after it); a deferred session that
	// has had no write is unknown this long after it was issued. Default 24h.
	UploadIdle time.Duration
	// AdminRemote lets clients that are not on loopback use the admin API
	// (/admin/v1/). Off by default until access control lands.
	AdminRemote bool
	// Ready reports whether the node can serve (for /readyz).
	Ready func(ctx context.Context) error
	// Registry receives the HTTP metrics; nil uses a private registry.
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Server serves the OCI Distribution API.
type Server struct {
	meta    Metadata
	blobs   atomic.Pointer[blobstore.Store]
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	reg     *prometheus.Registry
	pulls   pullRecorder

	dataSlots    chan struct{} // one per request moving blob bytes
	repoSettings settingsCache
	keyJobs      *keyJobs
}

// New returns a Server over meta and blobs.
func New(cfg Config, meta Metadata, blobs *blobstore.Store) *Server {
	if cfg.KeyName == "" {
		cfg.KeyName = keys.DefaultKeyName
	}
	if cfg.MaxDataRequests <= 0 {
		cfg.MaxDataRequests = 256
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = defaultRequestTimeout
	}
	if cfg.MaxListPage <= 0 {
		cfg.MaxListPage = 10000
	}
	if cfg.UploadIdle <= 0 {
		cfg.UploadIdle = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{meta: meta, cfg: cfg, log: cfg.Logger, metrics: newMetrics(reg), reg: reg,
		dataSlots: make(chan struct{}, cfg.MaxDataRequests), keyJobs: newKeyJobs(reg)}
	s.blobs.Store(blobs)
	return s
}

// SetBlobs replaces the blob pipeline, for example when the erasure geometry
// changes with the number of storage nodes. Requests under way finish with
// the old one; layouts record their own geometry, so both read alike.
func (s *Server) SetBlobs(b *blobstore.Store) { s.blobs.Store(b) }

func (s *Server) blobstore() *blobstore.Store { return s.blobs.Load() }

// Handler returns the HTTP handler with every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Ready != nil {
			if err := s.cfg.Ready(r.Context()); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	// /v2 is routed here, not by the ServeMux, which would clean paths
	// such as /v2/a//b/... and redirect instead of refusing the name.
	v2 := s.instrument(http.HandlerFunc(s.serveV2))
	admin := s.instrument(http.HandlerFunc(s.serveAdmin))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2" || strings.HasPrefix(r.URL.Path, "/v2/") {
			v2.ServeHTTP(w, r)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/admin/v1/") {
			admin.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// route is a parsed /v2/ path.
type route struct {
	kind string // ping, catalog, tags, blob, uploads, upload, manifest, referrers
	name string // repository
	ref  string // digest, tag or upload id
}

// parseRoute splits a /v2/ path. Repository names contain slashes, so the
// route is found from the right: the last path element names the object and
// the one before it the collection.
func parseRoute(path string) (route, bool) {
	p := strings.TrimPrefix(path, "/v2")
	if p == "" || p == "/" {
		return route{kind: "ping"}, true
	}
	p = strings.TrimPrefix(p, "/")
	if p == "_catalog" {
		return route{kind: "catalog"}, true
	}
	if name, ok := strings.CutSuffix(p, "/tags/list"); ok {
		return route{kind: "tags", name: name}, true
	}
	if name, ok := strings.CutSuffix(p, "/blobs/uploads/"); ok {
		return route{kind: "uploads", name: name}, true
	}
	if name, ok := strings.CutSuffix(p, "/blobs/uploads"); ok {
		return route{kind: "uploads", name: name}, true
	}
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return route{}, false
	}
	head, last := p[:i], p[i+1:]
	if name, ok := strings.CutSuffix(head, "/blobs/uploads"); ok && last != "" {
		return route{kind: "upload", name: name, ref: last}, true
	}
	j := strings.LastIndexByte(head, '/')
	if j < 0 || last == "" {
		return route{}, false
	}
	name, coll := head[:j], head[j+1:]
	switch coll {
	case "blobs":
		return route{kind: "blob", name: name, ref: last}, true
	case "manifests":
		return route{kind: "manifest", name: name, ref: last}, true
	case "referrers":
		return route{kind: "referrers", name: name, ref: last}, true
	}
	return route{}, false
}

func (s *Server) serveV2(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, ok := parseRoute(r.URL.Path)
	if !ok {
		s.writeError(w, r, errNotFound)
		return
	}
	setRouteLabel(r, rt.kind)
	if rt.name != "" {
		if err := oci.ValidateRepoName(rt.name); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	var err error
	switch rt.kind + " " + r.Method {
	case "blob GET", "upload PATCH", "upload PUT", "uploads POST":
		release, ok := s.acquireData(r)
		if !ok {
			s.writeError(w, r, errTooManyRequests)
			return
		}
		defer release()
	}
	switch rt.kind + " " + r.Method {
	case "ping GET", "ping HEAD":
		w.Header().Set("Content-Type", "application/json")
		_, err = w.Write([]byte("{}"))
	case "catalog GET":
		err = s.catalog(w, r)
	case "tags GET":
		err = s.tagsList(w, r, rt.name)
	case "blob GET", "blob HEAD":
		err = s.getBlob(w, r, rt.name, rt.ref)
	case "blob DELETE":
		err = s.deleteBlob(w, r, rt.name, rt.ref)
	case "uploads POST":
		err = s.startUpload(w, r, rt.name)
	case "upload GET":
		err = s.uploadStatus(w, r, rt.name, rt.ref)
	case "upload PATCH":
		err = s.patchUpload(w, r, rt.name, rt.ref)
	case "upload PUT":
		err = s.finishUpload(w, r, rt.name, rt.ref)
	case "upload DELETE":
		err = s.cancelUpload(w, r, rt.name, rt.ref)
	case "manifest GET", "manifest HEAD":
		err = s.getManifest(w, r, rt.name, rt.ref)
	case "manifest PUT":
		err = s.putManifest(w, r, rt.name, rt.ref)
	case "manifest DELETE":
		err = s.deleteManifest(w, r, rt.name, rt.ref)
	case "referrers GET":
		err = s.referrers(w, r, rt.name, rt.ref)
	default:
		err = errUnsupported
	}
	if err != nil {
		s.writeError(w, r, err)
	}
}

// requestTimeout bounds metadata operations that do not stream a body: long
// enough to ride out a leader election, short enough that a client behind a
// minority partition gets its 503 promptly.
const defaultRequestTimeout = 10 * time.Second

// dataAdmitWait is how long a request that moves blob bytes waits for a
// data-request slot, and a blob GET for the read memory of its first
// segment, before it is refused with 429 TOOMANYREQUESTS.
const dataAdmitWait = 200 * time.Millisecond

// acquireData takes a data-request slot, waiting briefly for one to free.
func (s *Server) acquireData(r *http.Request) (release func(), ok bool) {
	select {
	case s.dataSlots <- struct{}{}:
		return func() { <-s.dataSlots }, true
	default:
	}
	t := time.NewTimer(dataAdmitWait)
	defer t.Stop()
	select {
	case s.dataSlots <- struct{}{}:
		return func() { <-s.dataSlots }, true
	case <-t.C:
	case <-r.Context().Done():
	}
	s.metrics.throttled.Inc()
	return nil, false
}
