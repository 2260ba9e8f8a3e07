// Package ociimage builds the daemon's container image without a container engine: one
// gzip layer (the static binary, an /etc/passwd with the unprivileged user, the state and
// socket directories owned by it), the OCI image config and manifest, written as an
// oci-archive (an OCI image layout in a tar) that `ctr image import`, skopeo and podman read.
package ociimage
