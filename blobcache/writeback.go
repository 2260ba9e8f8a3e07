package blobcache

import (
	"os"

	"golang.org/x/sys/unix"
)

// writebackEvery is how much of a fill may sit dirty in the page cache before the fill asks
// the kernel to start writing it out.
const writebackEvery = 8 << 20

// writeback starts the kernel's write-out of a fill file while the download goes on, so that
// the fsync of the commit finds little left to write. Without it a node that pulls an image
// writes every blob to disk at once at the end of the pull, when containerd syncs its own
// copy and unpacks the layers on the same disk. It tracks what it has handed over already.
type writeback struct {
	file    *os.File
	started int64
}

// written tells it that the file holds data up to end. SYNC_FILE_RANGE_WRITE only queues the
// range for writing and does not wait for it; an error changes nothing for the fill (the
// commit's fsync still makes the file durable), so it is ignored.
func (wb *writeback) written(end int64) {
	if wb.file == nil || end-wb.started < writebackEvery {
		return
	}
	from := wb.started
	wb.started = end
	if rc, err := wb.file.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_ = unix.SyncFileRange(int(fd), from, end-from, unix.SYNC_FILE_RANGE_WRITE)
		})
	}
}
