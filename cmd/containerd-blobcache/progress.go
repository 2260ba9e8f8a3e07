package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

// progress shows a prefetch: on a terminal one bar redrawn in place, otherwise one plain
// line per resolved image and finished blob.
type progress struct {
	out   io.Writer
	tty   bool
	start time.Time
	image string
	blobs map[digest.Digest]*blobProgress
	order []digest.Digest
	drawn bool
}

type blobProgress struct {
	size, done int64
	result     string
}

func newProgress(out io.Writer, tty bool) *progress {
	return &progress{out: out, tty: tty, start: time.Now(), blobs: map[digest.Digest]*blobProgress{}}
}

func (p *progress) event(ev adminapi.PrefetchEvent) {
	switch ev.Event {
	case "resolved":
		p.image = ev.Image
		p.line(fmt.Sprintf("%s: resolved to %s", ev.Image, ev.Digest))
	case "blob":
		b := p.blobs[ev.Digest]
		if b == nil {
			b = &blobProgress{}
			p.blobs[ev.Digest] = b
			p.order = append(p.order, ev.Digest)
		}
		b.size, b.done = ev.Size, ev.Done
		if ev.Result != "" && b.result == "" {
			b.result = ev.Result
			p.line(fmt.Sprintf("%s: %s %s %s", ev.Image, short(ev.Digest), humanBytes(ev.Size), ev.Result))
		}
		p.draw()
	case "done":
		var total int64
		for _, b := range p.blobs {
			total += b.size
		}
		p.line(fmt.Sprintf("%s: done, %d blobs, %s in %s (platform %s)", ev.Image, len(p.blobs), humanBytes(total), time.Since(p.start).Round(time.Millisecond), ev.Platform))
	case "error":
		p.line(fmt.Sprintf("%s: failed: %s", ev.Image, ev.Error))
	}
}

// line prints a line above the bar.
func (p *progress) line(s string) {
	if p.tty && p.drawn {
		fmt.Fprint(p.out, "\r\033[K")
		p.drawn = false
	}
	fmt.Fprintln(p.out, s)
	p.draw()
}

func (p *progress) draw() {
	if !p.tty || len(p.blobs) == 0 {
		return
	}
	var size, done int64
	finished := 0
	for _, b := range p.blobs {
		size += b.size
		done += b.done
		if b.result != "" {
			finished++
		}
	}
	const width = 30
	filled := 0
	if size > 0 {
		filled = int(int64(width) * done / size)
	}
	bar := strings.Repeat("=", min(filled, width)) + strings.Repeat(" ", width-min(filled, width))
	fmt.Fprintf(p.out, "\r\033[K[%s] %s / %s  %d/%d blobs", bar, humanBytes(done), humanBytes(size), finished, len(p.blobs))
	p.drawn = true
}

func (p *progress) finish() {
	if p.tty && p.drawn {
		fmt.Fprint(p.out, "\r\033[K")
		p.drawn = false
	}
}
