package blobcache

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWritebackHandsOverEveryEightMiB: a fill written in copy-buffer steps asks for the
// write-out of each further writebackEvery bytes once, from where the last request ended.
func TestWritebackHandsOverEveryEightMiB(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wb := writeback{file: f}
	buf := make([]byte, fillBufferSize)
	var off int64
	var handedOver []int64
	for off < 20<<20 {
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		off += int64(len(buf))
		before := wb.started
		wb.written(off)
		if wb.started != before {
			handedOver = append(handedOver, wb.started)
		}
	}
	if len(handedOver) != 2 || handedOver[0] != writebackEvery || handedOver[1] != 2*writebackEvery {
		t.Errorf("write-out requested up to %v, want at %d and %d", handedOver, writebackEvery, 2*writebackEvery)
	}

	// Without a file (a fill written elsewhere) it does nothing.
	var none writeback
	none.written(64 << 20)
	if none.started != 0 {
		t.Errorf("writeback without a file moved to %d", none.started)
	}
}
