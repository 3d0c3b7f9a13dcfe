package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/strata-registry/strata/api/oci"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/gc"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// The admin API: JSON over HTTP under /admin/v1/<Operation>, with ECR's
// operation names and request and response shapes, and ECR-style errors
// ({"__type": "RepositoryNotFoundException", "message": ...}). It answers
// only clients on loopback unless Config.AdminRemote is set (until access
// control lands).

// Admin is what the admin API needs beyond Metadata: the leader's
// housekeeping (cluster.Meta implements it).
type Admin interface {
	CollectGarbage(ctx context.Context, grace time.Duration, sweep, async bool) (*cpb.GCStats, error)
	GCStatus(ctx context.Context) (*cpb.GCStatusResponse, error)
	Lifecycle(ctx context.Context, repo, policyText string, apply bool) (*cpb.LifecycleResponse, error)
}

// adminError is an ECR-style error.
type adminError struct {
	Type    string `json:"__type"`
	Message string `json:"message"`
	status  int
}

func (e *adminError) Error() string { return e.Type + ": " + e.Message }

func adminErr(typ string, status int, format string, args ...any) *adminError {
	return &adminError{Type: typ, Message: fmt.Sprintf(format, args...), status: status}
}

// toAdminError maps domain errors to ECR's exception names.
func toAdminError(err error) *adminError {
	var ae *adminError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, metastore.ErrRepoUnknown):
		return adminErr("RepositoryNotFoundException", 400, "%v", err)
	case errors.Is(err, metastore.ErrRepoExists):
		return adminErr("RepositoryAlreadyExistsException", 400, "%v", err)
	case errors.Is(err, metastore.ErrRepoNotEmpty):
		return adminErr("RepositoryNotEmptyException", 400, "%v", err)
	case errors.Is(err, gc.ErrPolicyInvalid), errors.Is(err, gc.ErrMutabilityInvalid),
		errors.Is(err, oci.ErrNameInvalid), errors.Is(err, metastore.ErrCommandInvalid):
		return adminErr("InvalidParameterException", 400, "%v", err)
	case errors.Is(err, gc.ErrNoPolicy):
		return adminErr("LifecyclePolicyNotFoundException", 400, "%v", err)
	}
	if c, known := codeOf(err); known && c.status == http.StatusServiceUnavailable {
		return adminErr("ServiceUnavailableException", 503, "%v", err)
	}
	return adminErr("ServerException", 500, "%v", err)
}

func isLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	op := strings.TrimPrefix(r.URL.Path, "/admin/v1/")
	setRouteLabel(r, "admin")
	var resp any
	var err error
	switch {
	case !s.cfg.AdminRemote && !isLoopback(r.RemoteAddr):
		err = adminErr("AccessDeniedException", 403, "the admin API answers loopback clients only")
	case r.Method != http.MethodPost:
		err = adminErr("InvalidRequestException", 405, "use POST /admin/v1/<Operation> with a JSON body")
	default:
		resp, err = s.adminOp(r, op)
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	if err != nil {
		ae := toAdminError(err)
		if ae.status >= 500 {
			s.log.Warn("admin request failed", "op", op, "err", err)
		}
		w.WriteHeader(ae.status)
		_ = json.NewEncoder(w).Encode(ae)
		return
	}
	_ = json.NewEncoder(w).Encode(resp)
}

type adminRequest struct {
	RepositoryName         string      `json:"repositoryName"`
	RepositoryNames        []string    `json:"repositoryNames"`
	LifecyclePolicyText    string      `json:"lifecyclePolicyText"`
	ImageTagMutability     string      `json:"imageTagMutability"`
	ImageTagMutabilityExcl []gc.Filter `json:"imageTagMutabilityExclusionFilters"`
	Force                  bool        `json:"force"`
	GraceSeconds           *float64    `json:"graceSeconds"`
	Sweep                  bool        `json:"sweep"`
	Wait                   bool        `json:"wait"`
	MaxResults             int         `json:"maxResults"`
	DurabilityClass        *durability `json:"durabilityClass"`
	NextToken              string      `json:"nextToken"`
	EncryptionConfig       *encryption `json:"encryptionConfiguration"`
	KeyName                string      `json:"keyName"`
	KeyVersion             string      `json:"keyVersion"`
	Rotate                 *bool       `json:"rotate"`
	RetainKey              bool        `json:"retainKey"`
}

// encryption is ECR's encryptionConfiguration of a repository.
type encryption struct {
	EncryptionType string `json:"encryptionType"`
	KmsKey         string `json:"kmsKey,omitempty"`
}

// durability is Strata's durability class of a repository (an extension of
// ECR's shapes): the erasure geometry of its new blobs.
type durability struct {
	DataShards   uint32 `json:"dataShards"`
	ParityShards uint32 `json:"parityShards"`
}

type repositoryJSON struct {
	RepositoryName                     string      `json:"repositoryName"`
	CreatedAt                          float64     `json:"createdAt"`
	ImageTagMutability                 string      `json:"imageTagMutability"`
	ImageTagMutabilityExclusionFilters []gc.Filter `json:"imageTagMutabilityExclusionFilters,omitempty"`
	RepositoryURI                      string      `json:"repositoryUri,omitempty"`
	DurabilityClass                    *durability `json:"durabilityClass,omitempty"`
	EncryptionConfiguration            encryption  `json:"encryptionConfiguration"`
}

func epoch(ns int64) float64 { return float64(ns) / 1e9 }

func repoJSON(r *pb.Repository) repositoryJSON {
	out := repositoryJSON{RepositoryName: r.Name, CreatedAt: epoch(r.CreatedUnixNano), ImageTagMutability: r.TagMutability}
	if out.ImageTagMutability == "" {
		out.ImageTagMutability = metastore.Mutable
	}
	for _, f := range r.MutabilityExclusions {
		out.ImageTagMutabilityExclusionFilters = append(out.ImageTagMutabilityExclusionFilters, gc.Filter{FilterType: gc.FilterTypeWildcard, Filter: f})
	}
	if r.DurabilityK > 0 {
		out.DurabilityClass = &durability{DataShards: r.DurabilityK, ParityShards: r.DurabilityM}
	}
	out.EncryptionConfiguration = encryption{EncryptionType: metastore.EncryptionAES256}
	if r.EncryptionType == metastore.EncryptionKMS {
		out.EncryptionConfiguration = encryption{EncryptionType: r.EncryptionType, KmsKey: r.KmsKey}
	}
	return out
}

func (s *Server) adminOp(r *http.Request, op string) (any, error) {
	var req adminRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return nil, adminErr("InvalidParameterException", 400, "request body: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	needRepo := func() error {
		if req.RepositoryName == "" {
			return adminErr("InvalidParameterException", 400, "repositoryName is required")
		}
		return oci.ValidateRepoName(req.RepositoryName)
	}
	admin, _ := s.meta.(Admin)
	switch op {
	case "CreateRepository":
		if err := needRepo(); err != nil {
			return nil, err
		}
		mut, err := gc.ParseMutability(req.ImageTagMutability, req.ImageTagMutabilityExcl)
		if err != nil {
			return nil, err
		}
		create := &pb.CreateRepository{Repo: req.RepositoryName, TagMutability: mut.Mode, MutabilityExclusions: mut.Exclusions}
		if d := req.DurabilityClass; d != nil {
			create.DurabilityK, create.DurabilityM = d.DataShards, d.ParityShards
		}
		if err := s.repoEncryption(ctx, req.EncryptionConfig, create); err != nil {
			return nil, err
		}
		if err := s.propose(ctx, &pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: create}}); err != nil {
			return nil, err
		}
		s.forgetSettings(req.RepositoryName)
		rec, err := s.meta.Repository(ctx, req.RepositoryName)
		if err != nil {
			return nil, err
		}
		return map[string]any{"repository": repoJSON(rec)}, nil
	case "DescribeRepositories":
		names := req.RepositoryNames
		next := ""
		if len(names) == 0 {
			n := req.MaxResults
			if n <= 0 || n > 1000 {
				n = 100
			}
			var more bool
			if names, more, err = s.meta.Repositories(ctx, req.NextToken, n); err != nil {
				return nil, err
			}
			if more && len(names) > 0 {
				next = names[len(names)-1]
			}
		}
		out := []repositoryJSON{}
		for _, n := range names {
			rec, err := s.meta.Repository(ctx, n)
			if err != nil {
				return nil, err
			}
			out = append(out, repoJSON(rec))
		}
		resp := map[string]any{"repositories": out}
		if next != "" {
			resp["nextToken"] = next
		}
		return resp, nil
	case "DeleteRepository":
		if err := needRepo(); err != nil {
			return nil, err
		}
		rec, err := s.meta.Repository(ctx, req.RepositoryName)
		if err != nil {
			return nil, err
		}
		if err := s.propose(ctx, &pb.Command{Op: &pb.Command_DeleteRepository{DeleteRepository: &pb.DeleteRepository{
			Repo: req.RepositoryName, Force: req.Force}}}); err != nil {
			return nil, err
		}
		s.forgetSettings(req.RepositoryName)
		resp := map[string]any{"repository": repoJSON(rec)}
		if !req.RetainKey {
			destroyed, err := s.shredRepositoryKey(ctx, rec)
			if err != nil {
				return nil, fmt.Errorf("repository %s deleted, but its key was not destroyed: %w", rec.Name, err)
			}
			if destroyed != "" {
				resp["keyDestroyed"] = destroyed
			}
		}
		return resp, nil
	case "PutDurabilityClass":
		if err := needRepo(); err != nil {
			return nil, err
		}
		d := req.DurabilityClass
		if d == nil {
			return nil, adminErr("InvalidParameterException", 400, "durabilityClass is required ({\"dataShards\":k,\"parityShards\":m}; 0,0 for the cluster's)")
		}
		if err := s.setPolicy(ctx, &pb.SetRepositoryPolicy{Repo: req.RepositoryName, Set: []string{"durability"},
			DurabilityK: d.DataShards, DurabilityM: d.ParityShards}); err != nil {
			return nil, err
		}
		return map[string]any{"repositoryName": req.RepositoryName, "durabilityClass": d}, nil
	case "PutImageTagMutability":
		if err := needRepo(); err != nil {
			return nil, err
		}
		mut, err := gc.ParseMutability(req.ImageTagMutability, req.ImageTagMutabilityExcl)
		if err != nil {
			return nil, err
		}
		if err := s.setPolicy(ctx, &pb.SetRepositoryPolicy{Repo: req.RepositoryName, Set: []string{"tag_mutability"},
			TagMutability: mut.Mode, MutabilityExclusions: mut.Exclusions}); err != nil {
			return nil, err
		}
		return map[string]any{"repositoryName": req.RepositoryName, "imageTagMutability": orDefault(mut.Mode, metastore.Mutable),
			"imageTagMutabilityExclusionFilters": mut.Filters()}, nil
	case "PutLifecyclePolicy", "StartLifecyclePolicyPreview":
		if err := needRepo(); err != nil {
			return nil, err
		}
		field := "lifecycle_policy"
		text := req.LifecyclePolicyText
		if op == "StartLifecyclePolicyPreview" {
			field = "lifecycle_preview_policy"
			if text == "" {
				rec, err := s.meta.Repository(ctx, req.RepositoryName)
				if err != nil {
					return nil, err
				}
				if text = rec.LifecyclePolicy; text == "" {
					return nil, fmt.Errorf("%w: %s has no lifecycle policy to preview", gc.ErrNoPolicy, req.RepositoryName)
				}
			}
		} else if text == "" {
			return nil, adminErr("InvalidParameterException", 400, "lifecyclePolicyText is required")
		}
		if _, err := gc.ParsePolicy([]byte(text)); err != nil {
			return nil, err
		}
		if err := s.setPolicy(ctx, &pb.SetRepositoryPolicy{Repo: req.RepositoryName, Set: []string{field},
			LifecyclePolicy: text, LifecyclePreviewPolicy: text}); err != nil {
			return nil, err
		}
		resp := map[string]any{"repositoryName": req.RepositoryName, "lifecyclePolicyText": text}
		if op == "StartLifecyclePolicyPreview" {
			resp["status"] = "IN_PROGRESS"
		}
		return resp, nil
	case "GetLifecyclePolicy", "DeleteLifecyclePolicy":
		if err := needRepo(); err != nil {
			return nil, err
		}
		rec, err := s.meta.Repository(ctx, req.RepositoryName)
		if err != nil {
			return nil, err
		}
		if rec.LifecyclePolicy == "" {
			return nil, fmt.Errorf("%w: %s", gc.ErrNoPolicy, req.RepositoryName)
		}
		resp := map[string]any{"repositoryName": rec.Name, "lifecyclePolicyText": rec.LifecyclePolicy}
		if op == "GetLifecyclePolicy" {
			resp["lastEvaluatedAt"] = epoch(rec.LifecyclePolicyUpdatedUnixNano)
			return resp, nil
		}
		if err := s.setPolicy(ctx, &pb.SetRepositoryPolicy{Repo: req.RepositoryName, Set: []string{"lifecycle_policy"}}); err != nil {
			return nil, err
		}
		return resp, nil
	case "GetLifecyclePolicyPreview":
		if err := needRepo(); err != nil {
			return nil, err
		}
		rec, err := s.meta.Repository(ctx, req.RepositoryName)
		if err != nil {
			return nil, err
		}
		text := rec.LifecyclePreviewPolicy
		if text == "" {
			return nil, adminErr("LifecyclePolicyPreviewNotFoundException", 400, "no preview was started for %s", rec.Name)
		}
		if admin == nil {
			return nil, adminErr("ServerException", 500, "this frontend cannot reach the lifecycle runner")
		}
		res, err := admin.Lifecycle(ctx, rec.Name, text, false)
		if err != nil {
			return nil, err
		}
		if err := lifecycleError(res); err != nil {
			return nil, err
		}
		results := []map[string]any{}
		for _, e := range res.Expirations {
			results = append(results, map[string]any{"imageDigest": e.Digest, "imageTags": orEmpty(e.Tags),
				"imagePushedAt": epoch(e.PushedUnixNano), "action": map[string]string{"type": "EXPIRE"},
				"appliedRulePriority": e.RulePriority})
		}
		return map[string]any{"repositoryName": rec.Name, "lifecyclePolicyText": text, "status": "COMPLETE",
			"previewResults": results, "summary": map[string]int{"expiringImageTotalCount": len(results)}}, nil
	case "StartGarbageCollection":
		if admin == nil {
			return nil, adminErr("ServerException", 500, "this frontend cannot reach the garbage collector")
		}
		grace := time.Duration(-1)
		if req.GraceSeconds != nil {
			if *req.GraceSeconds < 0 {
				return nil, adminErr("InvalidParameterException", 400, "graceSeconds must not be negative")
			}
			grace = time.Duration(*req.GraceSeconds * float64(time.Second))
		}
		return admin.CollectGarbage(ctx, grace, req.Sweep, !req.Wait)
	case "RotateKey", "GetKeyRotationStatus", "RetireKeyVersion", "ListKeys":
		return s.keyAdminOp(ctx, op, &req)
	case "GetGarbageCollectionStatus":
		if admin == nil {
			return nil, adminErr("ServerException", 500, "this frontend cannot reach the garbage collector")
		}
		return admin.GCStatus(ctx)
	}
	return nil, adminErr("UnknownOperationException", 400, "unknown operation %q", op)
}

func (s *Server) setPolicy(ctx context.Context, c *pb.SetRepositoryPolicy) error {
	return s.propose(ctx, &pb.Command{Op: &pb.Command_SetRepositoryPolicy{SetRepositoryPolicy: c}})
}

func lifecycleError(res *cpb.LifecycleResponse) error {
	switch res.ErrorCode {
	case "":
		return nil
	case "REPOSITORY_NOT_FOUND":
		return adminErr("RepositoryNotFoundException", 400, "%s", res.ErrorMessage)
	case "LIFECYCLE_POLICY_NOT_FOUND":
		return adminErr("LifecyclePolicyNotFoundException", 400, "%s", res.ErrorMessage)
	}
	return adminErr("InvalidParameterException", 400, "%s", res.ErrorMessage)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
