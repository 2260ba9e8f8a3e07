// Package admin is the daemon's admin API: JSON over HTTP on a unix socket (mode 0600,
// beside the content socket) that the stats, ls, gc, verify, rm and prefetch commands of
// the CLI use while the daemon runs. It only reads and removes through the store's own
// operations, and prefetch sends its requests through the mirror handler itself, so a
// prefetched image is cached exactly as a pull would have cached it. The wire format (paths,
// request and response JSON) is in adminapi, which the CLI shares.
package admin
