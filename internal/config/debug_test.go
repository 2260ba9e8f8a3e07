package config

import (
	"strings"
	"testing"
)

func TestDebugAddress(t *testing.T) {
	for _, ok := range []string{"", "127.0.0.1:6060", "[::1]:6060", "localhost:0"} {
		if _, err := Parse([]byte("[debug]\naddress = \"" + ok + "\"")); err != nil {
			t.Errorf("debug.address %q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:6060", ":6060", "10.0.0.1:6060", "6060", "example.com:6060"} {
		_, err := Parse([]byte("[debug]\naddress = \"" + bad + "\""))
		if err == nil || !strings.Contains(err.Error(), "debug.address") {
			t.Errorf("debug.address %q: %v, want an error naming the key", bad, err)
		}
	}
}
