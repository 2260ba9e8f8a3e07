package resolver

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// Credential is what the daemon presents to one registry. Its String method never shows the
// secret, so that a credential printed by mistake leaks nothing.
type Credential struct {
	Username string
	Password string
	// IdentityToken is an OAuth2 refresh token (docker login with an identity provider); it
	// is used instead of the password at the token endpoint.
	IdentityToken string
	// NodePublic lets every client of this node read what the daemon fetched with this
	// credential, without showing credentials of its own.
	NodePublic bool
}

func (c Credential) String() string {
	return fmt.Sprintf("credential{user=%q, secret=%t}", c.Username, c.Password != "" || c.IdentityToken != "")
}

// hasSecret reports whether the credential can answer a challenge at all (an entry may only
// set node_public).
func (c Credential) hasSecret() bool {
	return c.Username != "" && c.Password != "" || c.IdentityToken != ""
}

// id is a stable, non-reversible name of the secret, used in token cache keys.
func (c Credential) id() string {
	sum := sha256.Sum256([]byte(c.Username + "\x00" + c.Password + "\x00" + c.IdentityToken))
	return hex.EncodeToString(sum[:8])
}

// Credentials maps registry names (as ?ns= names them, lower case) to credentials.
type Credentials map[string]Credential

// credentialsFile is the format of upstream.credentials_file.
type credentialsFile struct {
	Registries map[string]struct {
		Username      string `toml:"username"`
		Password      string `toml:"password"`
		IdentityToken string `toml:"identity_token"`
		NodePublic    bool   `toml:"node_public"`
	} `toml:"registries"`
}

// credentialSet is what the two files say, kept apart so that the precedence between the
// credentials file, credential helpers and plain auths is decided at lookup.
type credentialSet struct {
	// file holds the credentials file's entries; an entry may carry only NodePublic.
	file Credentials
	// auths are the Docker config's auths entries with a secret.
	auths Credentials
	// helpers are the Docker config's credHelpers (registry -> helper name), store its
	// credsStore (the helper asked for every other registry).
	helpers map[string]string
	store   string
}

func loadCredentialSet(credentialsFile, dockerConfig string) (*credentialSet, error) {
	set := &credentialSet{file: Credentials{}, auths: Credentials{}, helpers: map[string]string{}}
	if dockerConfig != "" {
		if err := readDockerConfig(dockerConfig, set); err != nil {
			return nil, err
		}
	}
	if credentialsFile != "" {
		if err := readCredentialsFile(credentialsFile, set.file); err != nil {
			return nil, err
		}
	}
	return set, nil
}

func readCredentialsFile(path string, creds Credentials) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("credentials file: %w", err)
	}
	var f credentialsFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		// The TOML error may quote the offending line, which may hold a password.
		return fmt.Errorf("credentials file %s: not valid TOML: %w", path, errdefs.ErrInvalidArgument)
	}
	if u := md.Undecoded(); len(u) > 0 {
		return fmt.Errorf("credentials file %s: unknown key %s: %w", path, u[0].String(), errdefs.ErrInvalidArgument)
	}
	for name, e := range f.Registries {
		reg := normalizeRegistry(name)
		if err := config.ValidRegistryHost(reg); err != nil {
			return fmt.Errorf("credentials file %s: registry %q: %w", path, name, err)
		}
		var c Credential
		if e.Username != "" || e.Password != "" || e.IdentityToken != "" {
			c = Credential{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
			if !c.hasSecret() {
				return fmt.Errorf("credentials file %s: registry %q needs username and password, or identity_token: %w", path, name, errdefs.ErrInvalidArgument)
			}
		}
		c.NodePublic = e.NodePublic
		creds[reg] = c
	}
	return nil
}

// dockerConfigFile is the part of ~/.docker/config.json the daemon reads.
type dockerConfigFile struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredsStore  string            `json:"credsStore"`
	CredHelpers map[string]string `json:"credHelpers"`
}

func readDockerConfig(path string, set *credentialSet) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("docker config: %w", err)
	}
	var f dockerConfigFile
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("docker config %s: not valid JSON: %w", path, errdefs.ErrInvalidArgument)
	}
	for name, e := range f.Auths {
		reg := normalizeRegistry(name)
		if config.ValidRegistryHost(reg) != nil {
			continue
		}
		c := Credential{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return fmt.Errorf("docker config %s: auths[%q].auth is not base64: %w", path, name, errdefs.ErrInvalidArgument)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return fmt.Errorf("docker config %s: auths[%q].auth is not user:password: %w", path, name, errdefs.ErrInvalidArgument)
			}
			c.Username, c.Password = user, pass
		}
		if c.hasSecret() {
			set.auths[reg] = c
		}
	}
	if f.CredsStore != "" {
		if err := validHelperName(f.CredsStore); err != nil {
			return fmt.Errorf("docker config %s: credsStore: %w", path, err)
		}
		set.store = f.CredsStore
	}
	for name, helper := range f.CredHelpers {
		reg := normalizeRegistry(name)
		if config.ValidRegistryHost(reg) != nil {
			continue
		}
		if err := validHelperName(helper); err != nil {
			return fmt.Errorf("docker config %s: credHelpers[%q]: %w", path, name, err)
		}
		set.helpers[reg] = helper
	}
	return nil
}

// normalizeRegistry turns the keys people write ("https://index.docker.io/v1/",
// "Registry.Example.com") into the registry name ?ns= uses.
func normalizeRegistry(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if i := strings.Index(name, "://"); i >= 0 {
		name = name[i+3:]
	}
	if i := strings.IndexByte(name, '/'); i >= 0 {
		name = name[:i]
	}
	switch name {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return name
}
