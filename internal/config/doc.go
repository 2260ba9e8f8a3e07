// Package config owns the daemon's configuration: the embedded defaults, the TOML file that
// overrides them, and the checks that refuse an unknown key or a bad value at start, naming
// the key.
package config
