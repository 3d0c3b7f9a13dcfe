package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushGGCR pushes img with go-containerregistry's remote.Write, the
// client library most Go tooling (crane, ko, ...) pushes with. It chooses
// its own upload style (existence checks, then streamed uploads). Only when
// remote.Write returns nil are its blobs and manifest acknowledged.
func (p *pusher) pushGGCR(ctx context.Context, img image) error {
	var layers []v1.Layer
	for _, l := range img.layers {
		layers = append(layers, static.NewLayer(l.Bytes(), types.OCIUncompressedLayer))
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	im, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		return err
	}
	cf, err := im.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Labels = map[string]string{"chaos.image": img.repo + ":" + img.tag}
	if im, err = mutate.ConfigFile(im, cf); err != nil {
		return err
	}
	rawCfg, err := im.RawConfigFile()
	if err != nil {
		return err
	}
	rawMan, err := im.RawManifest()
	if err != nil {
		return err
	}
	mt, err := im.MediaType()
	if err != nil {
		return err
	}
	refOf := func() (name.Tag, error) {
		u, err := url.Parse(p.c.Base)
		if err != nil {
			return name.Tag{}, err
		}
		return name.NewTag(u.Host+"/"+img.repo+":"+img.tag, name.Insecure)
	}
	config := LiteralBlob(rawCfg)
	blobs := append([]Blob{config}, img.layers...)
	m := ManifestOp{Repo: img.repo, Tag: img.tag, Digest: LiteralBlob(rawMan).Digest, MediaType: string(mt), Body: rawMan,
		Blobs: digests(blobs)}
	for _, b := range blobs {
		p.w.h.AttemptBlob(img.repo, b, StyleGGCR)
	}
	p.w.h.AttemptManifest(m)

	for round := 1; ; round++ {
		err = p.retry(ctx, "remote.Write "+img.repo+":"+img.tag, func() error {
			defer p.w.h.TrackInFlight()()
			ref, err := refOf() // the frontend of this attempt
			if err != nil {
				return err
			}
			err = remote.Write(ref, im,
				remote.WithContext(ctx),
				remote.WithAuth(authn.Anonymous),
				remote.WithTransport(p.c.HTTP.Transport),
				remote.WithJobs(2),
				// No retries of its own: a failure comes back here and is
				// retried (or classified) like every other step.
				remote.WithRetryBackoff(remote.Backoff{Duration: time.Millisecond, Steps: 1}),
			)
			return ggcrError(err)
		})
		if err == nil {
			break
		}
		if !p.collected(err, round) {
			return err
		}
	}
	for _, b := range blobs {
		p.w.h.AckBlob(img.repo, b, StyleGGCR)
	}
	p.w.h.AckManifest(m)
	return nil
}

// ggcrError maps go-containerregistry's errors onto the workload's: an HTTP
// error answer other than 503 becomes a StatusError (not transient);
// anything else (transport failures) stays transient.
func ggcrError(err error) error {
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode != 0 && te.StatusCode != http.StatusServiceUnavailable {
		se := &StatusError{Op: "remote.Write", Status: te.StatusCode, Body: te.Error()}
		if te.Request != nil {
			se.Method, se.URL = te.Request.Method, te.Request.URL.String()
		}
		if len(te.Errors) > 0 {
			se.Code = string(te.Errors[0].Code)
		}
		return se
	}
	if err != nil {
		return fmt.Errorf("remote.Write: %w", err)
	}
	return nil
}
