package diff

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// capability is a Linux capability the differ needs, and what for.
type capability struct {
	bit  uint
	name string
	why  string
}

// applyNeeds are the capabilities containerd's applier uses: it runs as containerd does, as
// root, and unpacks any tar an image may hold into containerd's snapshot directories.
var applyNeeds = []capability{
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "bind-mount a chain's first snapshot; set trusted.* xattrs (overlay opaque directories)"},
	{unix.CAP_CHOWN, "CAP_CHOWN", "give unpacked files the owners the layer names"},
	{unix.CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE", "write into directories whatever their modes"},
	{unix.CAP_FOWNER, "CAP_FOWNER", "set modes, times and xattrs of files the daemon does not own"},
	{unix.CAP_FSETID, "CAP_FSETID", "keep setuid and setgid bits of files in groups the daemon is not in"},
	{unix.CAP_MKNOD, "CAP_MKNOD", "create device files and overlay whiteouts (0/0 character devices)"},
	{unix.CAP_SETFCAP, "CAP_SETFCAP", "set file capabilities (security.capability xattrs)"},
}

// compareNeeds are the capabilities of containerd's walking comparer: it mounts both snapshots
// read-only and reads every file in them.
var compareNeeds = []capability{
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "mount the snapshots to compare"},
	{unix.CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE", "read every file whatever its mode"},
}

// RequiredCapabilities names (CAP_...) what Apply and Compare need together: what proxy mode's
// systemd drop-in and DaemonSet grant.
func RequiredCapabilities() []string {
	var out []string
	for _, c := range append(append([]capability{}, applyNeeds...), compareNeeds...) {
		if !slices.Contains(out, c.name) {
			out = append(out, c.name)
		}
	}
	return out
}

// CapSet is a set of Linux capabilities as the kernel writes it in /proc/<pid>/status: bit n
// is capability n.
type CapSet uint64

// Has reports whether capability bit is in the set.
func (c CapSet) Has(bit uint) bool { return bit < 64 && c&(1<<bit) != 0 }

// missing is what of need the set lacks.
func (c CapSet) missing(need []capability) []capability {
	var out []capability
	for _, n := range need {
		if !c.Has(n.bit) {
			out = append(out, n)
		}
	}
	return out
}

// EffectiveCapabilities is the calling process's effective capability set (CapEff in
// /proc/self/status): what the kernel checks when the applier mounts, chowns or mknods.
func EffectiveCapabilities() (CapSet, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCapEff(f)
}

// parseCapEff reads the CapEff line of a /proc/<pid>/status file (16 hexadecimal digits).
func parseCapEff(status io.Reader) (CapSet, error) {
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		n, err := strconv.ParseUint(value, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("CapEff %q is not a hexadecimal capability set: %w", value, errdefs.ErrInvalidArgument)
		}
		return CapSet(n), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no CapEff line in the process status: %w", errdefs.ErrNotFound)
}

// capabilityNames are the names of caps, comma-separated.
func capabilityNames(caps []capability) string {
	names := make([]string, len(caps))
	for i, c := range caps {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// privilegeError is the answer to an operation the daemon lacks capabilities for: a
// FailedPrecondition (errgrpc keeps the code) that names each missing capability and its use,
// so that containerd's pull error says what to fix.
func privilegeError(op string, missing []capability) error {
	uses := make([]string, len(missing))
	for i, c := range missing {
		uses[i] = c.name + ": " + c.why
	}
	return fmt.Errorf("%s needs capabilities the daemon does not have: %s (%s); run it as root with proxy mode's systemd unit or DaemonSet: %w",
		op, capabilityNames(missing), strings.Join(uses, "; "), errdefs.ErrFailedPrecondition)
}
