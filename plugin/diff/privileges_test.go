package diff

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParseCapEff(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		want         CapSet
		err          func(error) bool
	}{
		{"root", "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n", 0x1ffffffffff, nil},
		{"no capabilities", "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n", 0, nil},
		// CAP_CHOWN (0), CAP_DAC_OVERRIDE (1), CAP_FOWNER (3): today's mirror-mode unit.
		{"mirror unit", "CapEff:\t000000000000000b\n", 0xb, nil},
		{"no CapEff line", "Name:\tx\nCapPrm:\t0000000000000000\n", 0, errdefs.IsNotFound},
		{"not hexadecimal", "CapEff:\tall\n", 0, errdefs.IsInvalidArgument},
		{"too long", "CapEff:\t1ffffffffffffffff\n", 0, errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCapEff(strings.NewReader(tc.status))
			if tc.err != nil {
				if err == nil || !tc.err(err) {
					t.Fatalf("err = %v, want a %s error", err, tc.name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("CapEff = %#x, want %#x", uint64(got), uint64(tc.want))
			}
		})
	}
}

func TestMissingCapabilities(t *testing.T) {
	all := CapSet(0x1ffffffffff)
	if m := all.missing(applyNeeds); len(m) != 0 {
		t.Errorf("full set lacks %s", capabilityNames(m))
	}
	// The mirror-mode unit's bounding set: chown, dac_override, fowner.
	mirrorUnit := CapSet(1<<unix.CAP_CHOWN | 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_FOWNER)
	if got, want := capabilityNames(mirrorUnit.missing(applyNeeds)), "CAP_SYS_ADMIN, CAP_FSETID, CAP_MKNOD, CAP_SETFCAP"; got != want {
		t.Errorf("mirror unit lacks %q, want %q", got, want)
	}
	if got, want := capabilityNames(mirrorUnit.missing(compareNeeds)), "CAP_SYS_ADMIN"; got != want {
		t.Errorf("mirror unit lacks %q to compare, want %q", got, want)
	}
	noSysAdmin := all &^ (1 << unix.CAP_SYS_ADMIN)
	if got := capabilityNames(noSysAdmin.missing(applyNeeds)); got != "CAP_SYS_ADMIN" {
		t.Errorf("set without CAP_SYS_ADMIN lacks %q", got)
	}
	if CapSet(^uint64(0)).Has(64) {
		t.Error("bit 64 is not a capability")
	}
}

func TestEffectiveCapabilitiesOfThisProcess(t *testing.T) {
	caps, err := EffectiveCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel's own answer for one capability, to check the bit order against.
	var hdr unix.CapUserHeader
	hdr.Version = unix.LINUX_CAPABILITY_VERSION_3
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	kernel := CapSet(uint64(data[1].Effective)<<32 | uint64(data[0].Effective))
	if caps != kernel {
		t.Fatalf("CapEff %#x, capget says %#x", uint64(caps), uint64(kernel))
	}
}

func TestPrivilegeErrorNamesEachCapability(t *testing.T) {
	missing := []capability{applyNeeds[0], applyNeeds[5]}
	err := privilegeError("applying layer sha256:abc", missing)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("%v is not a failed precondition", err)
	}
	for _, want := range []string{"applying layer sha256:abc", "CAP_SYS_ADMIN", "CAP_MKNOD", "overlay whiteouts"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
