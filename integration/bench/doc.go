// Package bench holds the side-by-side benchmarks behind `make bench`: containerd-blobcache
// against a direct pull, distribution as a pull-through proxy and nginx (sendfile), on
// loopback, with an emulated slow upstream link for the cold scenarios. The scenarios live
// in bench_test.go behind the build tag `bench`, so `go test ./...` does not run them; this
// package's untagged files are the pieces they use (the link emulator, statistics, the
// report table), with unit tests of their own.
package bench
