// Package server wires the daemon's process, as containerd's cmd/containerd/server does: it
// maps the configuration to each package's options, opens the store, binds every listener
// (the surfaces under plugin/, metrics and health, debug, admin), serves until told to stop
// and shuts down cleanly (requests in flight finish or are cut after a bound, the index is
// closed). The surfaces themselves live under plugin/; this package only connects them.
package server
