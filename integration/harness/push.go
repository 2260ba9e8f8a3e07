package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Pusher uploads blobs and manifests to a registry with the distribution HTTP API
// (monolithic uploads, no authentication).
type Pusher struct {
	// BaseURL is "http://host:port" of the registry.
	BaseURL string
	Client  *http.Client
}

// NewPusher returns a Pusher for the registry at baseURL.
func NewPusher(baseURL string) *Pusher {
	return &Pusher{BaseURL: strings.TrimSuffix(baseURL, "/"), Client: &http.Client{Timeout: 5 * time.Minute}}
}

// BlobExists asks the registry with HEAD whether repo already has the blob.
func (p *Pusher) BlobExists(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, fmt.Sprintf("%s/v2/%s/blobs/%s", p.BaseURL, repo, d), nil)
	if err != nil {
		return false, err
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	default:
		return false, fmt.Errorf("HEAD blob %s: %s", d, resp.Status)
	}
}

// PushBlob uploads size bytes from open() as blob d of repo, unless the registry has it.
func (p *Pusher) PushBlob(ctx context.Context, repo string, d digest.Digest, size int64, open func() (io.ReadCloser, error)) error {
	exists, err := p.BlobExists(ctx, repo, d)
	if err != nil {
		return err
	}
	if exists {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/v2/%s/blobs/uploads/", p.BaseURL, repo), nil)
	if err != nil {
		return err
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload of %s: %s: %s", d, resp.Status, body)
	}
	loc, err := resp.Location()
	if err != nil {
		return fmt.Errorf("start upload of %s: no Location: %w", d, err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()

	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	put, err := http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), rc)
	if err != nil {
		return err
	}
	put.ContentLength = size
	put.Header.Set("Content-Type", "application/octet-stream")
	resp, err = p.Client.Do(put)
	if err != nil {
		return err
	}
	body, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("upload %s to %s: %s: %s", d, repo, resp.Status, body)
	}
	return nil
}

// PushBytes uploads b as a blob.
func (p *Pusher) PushBytes(ctx context.Context, repo string, b []byte) (digest.Digest, error) {
	d := digest.FromBytes(b)
	return d, p.PushBlob(ctx, repo, d, int64(len(b)), func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

// PushFile uploads the file at path as blob d.
func (p *Pusher) PushFile(ctx context.Context, repo string, d digest.Digest, size int64, path string) error {
	return p.PushBlob(ctx, repo, d, size, func() (io.ReadCloser, error) { return os.Open(path) })
}

// PutManifest uploads a manifest or index under ref (a tag or a digest).
func (p *Pusher) PutManifest(ctx context.Context, repo, ref, mediaType string, b []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("%s/v2/%s/manifests/%s", p.BaseURL, repo, url.PathEscape(ref)), bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := p.Client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("put manifest %s:%s: %s: %s", repo, ref, resp.Status, body)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != digest.FromBytes(b).String() {
		return fmt.Errorf("put manifest %s:%s: registry says digest %s, want %s", repo, ref, got, digest.FromBytes(b))
	}
	return nil
}

// PushImageBlobs uploads the config and layers of im (not its manifest).
func (p *Pusher) PushImageBlobs(ctx context.Context, repo string, im *Image) error {
	for _, l := range im.Layers {
		if err := p.PushFile(ctx, repo, l.Descriptor.Digest, l.Descriptor.Size, l.Path); err != nil {
			return err
		}
	}
	if _, err := p.PushBytes(ctx, repo, im.ConfigBytes); err != nil {
		return err
	}
	return nil
}

// PushImage uploads im's blobs and its manifest, tagged tag (a digest-only push when tag is
// empty).
func (p *Pusher) PushImage(ctx context.Context, repo, tag string, im *Image) error {
	if err := p.PushImageBlobs(ctx, repo, im); err != nil {
		return err
	}
	ref := tag
	if ref == "" {
		ref = im.Manifest.Digest.String()
	}
	return p.PutManifest(ctx, repo, ref, ocispec.MediaTypeImageManifest, im.ManifestBytes)
}

// PushIndex uploads every image of ix by digest, then the index tagged tag.
func (p *Pusher) PushIndex(ctx context.Context, repo, tag string, ix *Index) error {
	for _, im := range ix.Images {
		if err := p.PushImage(ctx, repo, "", im); err != nil {
			return err
		}
	}
	return p.PutManifest(ctx, repo, tag, ocispec.MediaTypeImageIndex, ix.Bytes)
}

// PushImage builds and pushes an image to the registry at registryURL, failing the test on
// error.
func PushImage(t testing.TB, registryURL, repo, tag string, spec ImageSpec) *Image {
	t.Helper()
	im := BuildImage(t, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := NewPusher(registryURL).PushImage(ctx, repo, tag, im); err != nil {
		t.Fatalf("push %s:%s: %v", repo, tag, err)
	}
	return im
}

// PushIndex builds and pushes a multi-platform index, one image per spec.
func PushIndex(t testing.TB, registryURL, repo, tag string, specs ...ImageSpec) *Index {
	t.Helper()
	ix := BuildIndex(t, specs...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := NewPusher(registryURL).PushIndex(ctx, repo, tag, ix); err != nil {
		t.Fatalf("push index %s:%s: %v", repo, tag, err)
	}
	return ix
}

// Ref joins a registry host, repository and tag into an image reference.
func Ref(host, repo, tag string) string { return host + "/" + repo + ":" + tag }
