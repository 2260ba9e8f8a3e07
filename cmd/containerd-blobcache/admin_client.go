package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/containerd/errdefs/pkg/errhttp"

	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	config  *string
	address *string
	json    *bool
}

func addAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		config:  fs.String("config", "", "configuration file whose admin.address to use"),
		address: fs.String("address", "", "admin socket (default: admin.address of --config, or "+defaultAdminAddress()+")"),
		json:    fs.Bool("json", false, "print JSON instead of a table"),
	}
}

func defaultAdminAddress() string {
	cfg, _ := loadConfig("")
	return cfg.Admin.Address
}

// request makes one admin API call: body (if any) sent as JSON, the answer decoded into out.
// SIGINT and SIGTERM cancel it.
func (f adminFlags) request(method, path string, body, out any) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	return c.get(ctx, method, path, body, out)
}

func (f adminFlags) client() (*adminClient, error) {
	addr := *f.address
	if addr == "" {
		cfg, err := loadConfig(*f.config)
		if err != nil {
			return nil, err
		}
		addr = cfg.Admin.Address
	}
	return newAdminClient(addr), nil
}

// adminClient speaks the admin API over its unix socket.
type adminClient struct {
	address string
	http    *http.Client
}

func newAdminClient(address string) *adminClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", address)
		},
	}
	return &adminClient{address: address, http: &http.Client{Transport: tr}}
}

// errDaemonDown explains a refused or missing socket.
type errDaemonDown struct {
	address string
	err     error
}

func (e errDaemonDown) Error() string {
	return fmt.Sprintf("daemon not running: nothing answers on the admin socket %s (start it with `containerd-blobcache serve`, or point --address/--config at the admin.address it uses): %v", e.address, e.err)
}

func (c *adminClient) call(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://containerd-blobcache"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, errDaemonDown{address: c.address, err: unwrapOp(err)}
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("admin socket %s: permission denied (it is for root only)", c.address)
		}
		return nil, fmt.Errorf("admin socket %s: %w", c.address, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e adminapi.ErrorResponse
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, apiError{msg: e.Error, kind: errhttp.ToNative(resp.StatusCode)}
		}
		return nil, fmt.Errorf("admin API answered %s", resp.Status)
	}
	return resp, nil
}

// apiError is an error the daemon answered with: its message, and the errdefs sentinel its
// HTTP status stands for (errdefs.IsNotFound and forTerminal see it).
type apiError struct {
	msg  string
	kind error
}

func (e apiError) Error() string { return e.msg }
func (e apiError) Unwrap() error { return e.kind }

// unwrapOp keeps the system error of a dial ("connect: no such file or directory").
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err
	}
	return err
}

// get calls and decodes the JSON answer into out.
func (c *adminClient) get(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.call(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}
