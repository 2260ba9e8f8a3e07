package config

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzParse: any input is either refused with an error or gives a configuration that
// validates and survives a round trip through Write.
func FuzzParse(f *testing.F) {
	f.Add([]byte(DefaultTOML))
	f.Add([]byte(""))
	f.Add([]byte("root = \"/x\"\n[mirror]\naddress = \"127.0.0.1:1\"\n"))
	f.Add([]byte("[upstream]\nallowed_registries = [\"[\"]\n"))
	f.Add([]byte("[store]\ntag_freshness = \"-1s\"\nmax_manifest_size = 99999999999\n"))
	f.Add([]byte("[content]\naddress = \"/run/../x\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
		var buf bytes.Buffer
		if err := Write(&buf, cfg); err != nil {
			t.Fatalf("Write: %v", err)
		}
		again, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("Parse(Write(cfg)): %v\n%s", err, buf.Bytes())
		}
		if !reflect.DeepEqual(normalize(cfg), normalize(again)) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, again)
		}
	})
}

// normalize makes nil and empty lists equal: TOML cannot tell them apart.
func normalize(c Config) Config {
	for _, l := range []*[]string{&c.Upstream.AllowedRegistries, &c.Upstream.PlainHTTP, &c.Upstream.AllowPrivateNetworks} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	return c
}
