package config

// DefaultTOML is the complete default configuration with a comment for every key, as printed
// by `containerd-blobcache config default`. A test checks that it decodes to Default() and
// names every key, so that it cannot drift from the code.
const DefaultTOML = `# containerd-blobcache configuration. Every key is optional: a missing key keeps the
# default shown here. An unknown key or a bad value stops the daemon at start.

# State directory: index.db (bbolt index), blobs/sha256/<hex> (containerd's layout), fills/
# (downloads in progress, removed at start).
root = "/var/lib/containerd-blobcache"

# trace, debug, info, warn or error. debug logs one line per request.
log_level = "info"

[mirror]
  # HTTP listener of the registry mirror that containerd's hosts.toml points at. Keep it on
  # loopback: the mirror is for this node's containerd only.
  address = "127.0.0.1:5055"

  # Registry used for requests that carry no ?ns= (containerd always sends ns; other clients
  # may not). Empty: such requests are refused with 400 NAME_UNKNOWN.
  default_registry = ""

  # Time a client has to send its request headers (slow clients are cut).
  read_header_timeout = "10s"

  # Send a blob fetched on a miss only once all of it is downloaded and its digest checked.
  # Off (the default), clients get the bytes as they arrive and a blob that turns out corrupt
  # is cut just before its last byte: the cache keeps nothing, but containerd keeps the bytes
  # it received in its ingest and its commit of that blob fails (until the ingest is
  # removed). On, a corrupt upstream is a 502 and containerd fetches the blob from the
  # registry instead; the price is that a client sees no byte of a cold blob until it is
  # downloaded (see docs/FAULTS.md).
  verify_before_serve = false

  # On SIGTERM/SIGINT, time given to requests in flight before their connections are cut.
  shutdown_timeout = "10s"

[upstream]
  # Registries that ?ns= may name (glob patterns such as "*.example.com"). Anything else is
  # refused with 403 DENIED, so the daemon is not an open proxy.
  allowed_registries = ["*"]

  # Registries (host:port patterns) reached over plain http instead of https.
  plain_http = []

  # Registries allowed to resolve to loopback, private, link-local or cloud metadata
  # addresses. All others are refused at dial time, on the resolved IP.
  allow_private_networks = []

  # Time to establish a TCP (and TLS) connection to a registry.
  dial_timeout = "5s"

  # Time a registry has to answer with response headers. Past it the client gets a 502 and
  # containerd moves on to the registry itself (containerd would wait 30 s or more).
  response_header_timeout = "10s"

  # A download that receives no byte for this long is abandoned: a client that has its
  # headers is cut (containerd resumes with a Range request), one that has not gets a 502.
  stall_timeout = "5s"

  # A download that receives fewer than low_speed_limit bytes per second (bytes, or a string
  # with a unit: "10KiB") over low_speed_time is abandoned as a stalled one is (curl's
  # --speed-limit/--speed-time). Only the time spent waiting for the registry counts, not
  # the time a slow client takes. "0" turns the limit off (stall_timeout still applies).
  low_speed_limit = "10KiB"
  # The window over which the speed is judged.
  low_speed_time = "10s"

  # After a registry host fails to answer (no connection, no response headers within
  # response_header_timeout, a download stalled or under the low-speed limit), requests to it
  # get an immediate 502 for this long (containerd then goes to the registry itself), so a
  # hung registry costs one timeout per pull instead of one per request. Then one request
  # is let through as a probe: answered, the host is used again; not, another cool-down.
  # Logged ("upstream circuit open"/"closed") and in containerd_blobcache_upstream_circuit_open.
  # "0s" turns the breaker off.
  circuit_breaker_cooldown = "30s"

  # The daemon's own per-registry host configuration, in containerd's hosts.toml format and
  # layout (<dir>/<registry>/hosts.toml, certificate files next to it): CA and client
  # certificates, skip_verify, plain http, upstream mirrors in order, override_path, headers.
  # Never containerd's /etc/containerd/certs.d. A missing directory: registries are reached
  # directly.
  hosts_dir = "/etc/containerd-blobcache/certs.d"

  # TOML file with the daemon's own registry credentials (see README "Private registries and
  # credentials"); the daemon then answers those registries' Basic and Bearer challenges
  # itself. Empty: none; clients' own credentials pass through.
  credentials_file = ""

  # A Docker config.json read for credentials too: its "auths", and its credential helpers
  # ("credHelpers" per registry, else "credsStore"), which run docker-credential-<name> get
  # from the daemon's PATH. A registry's credentials_file entry wins over both; a helper's
  # answer wins over "auths".
  docker_config = ""

  # Time one credential helper run may take; past it the helper is killed and the registry is
  # reached without its credential (the failure is remembered for 15 s).
  credential_helper_timeout = "10s"

  # How long a helper's answer is used. The helper protocol carries no expiry; the answer is
  # also dropped, and the helper asked again once, when the registry refuses it (a 401).
  credential_helper_ttl = "5m"

  # How often credentials_file and docker_config are checked for a change (time, size, inode;
  # a Kubernetes Secret's symlink swap counts). A changed file is reloaded; one that does not
  # parse keeps the credentials in use and is logged. SIGHUP reloads at once. "0s": no checks.
  credentials_reload_interval = "10s"

  # A cached object obtained only with credentials is served to a client only after the
  # client's own credentials were accepted upstream for that repository and object (a
  # HEAD); the answer is remembered this long.
  private_access_ttl = "1m"

  # Forward proxy to the registries. "" (the default): the daemon's environment as read at
  # start, with Go's rules: HTTPS_PROXY for https registries, HTTP_PROXY for plain http ones,
  # NO_PROXY (comma-separated hosts, domains, CIDRs) reached directly, loopback always
  # direct. "direct": never a proxy, whatever the environment says. A URL
  # ("http://user:password@proxy.example.com:3128"; http, https, socks5, socks5h): every
  # registry through it. The dial guard still judges the registry, not the proxy: the
  # registry's name is resolved on this node and refused when it is a loopback, private or
  # link-local address (unless listed in allow_private_networks), before the request goes to
  # the proxy; the proxy itself may be on a private network.
  proxy = ""

  # Proxy per registry, winning over proxy and the environment (NO_PROXY included): glob
  # pattern of the registry (as ?ns= names it) or of the host dialled = proxy URL or
  # "direct"; the longest matching pattern wins. Example:
  # { "ghcr.io" = "http://proxy.example.com:3128", "*.corp.example.com" = "direct" }
  registry_proxies = {}

[store]
  # How long a tag is answered from the index without asking the registry. "0s" (the
  # default): every tag request is revalidated upstream with a HEAD (no manifest bytes move
  # when the digest is unchanged; concurrent requests for one tag share one HEAD), so a
  # re-pushed tag is seen at the next request. Longer saves those HEADs (registries with
  # rate limits) at the cost of a re-push being seen up to this late. Content addressed by
  # digest never expires by time.
  tag_freshness = "0s"

  # Largest manifest accepted from a registry, in bytes (containerd refuses more than 4 MiB).
  max_manifest_size = 4194304

  # Size the store keeps itself under: bytes, or a string with a unit ("500MB", "20GiB").
  # "0" means no limit (the disk is the limit: not recommended).
  max_size = "20GiB"

  # When the blobs pass high_watermark percent of max_size, the least recently used are
  # evicted until they are under low_watermark percent. Blobs containerd holds (content
  # API) and blobs being read or downloaded are never evicted; tags pointing at an evicted
  # manifest go with it.
  high_watermark = 90
  # The mark eviction brings the store down to, in percent of max_size.
  low_watermark = 80

  # Access times are kept in memory and written to the index this often, in one
  # transaction (and before every eviction, and at shutdown).
  access_flush_interval = "10s"

  # Freshness window per registry (glob pattern = duration), overriding tag_freshness; the
  # longest matching pattern wins. Example: { "registry.example.com" = "1m" } for a registry
  # that limits or bills every request (HEADs included), "0s" to always revalidate one.
  registry_tag_freshness = {}

  # Tags that are revalidated upstream at every request, whatever their freshness. A
  # pattern without ":" matches the tag ("latest", "nightly-*"); one with ":" matches
  # "registry/repository:tag" part by part ("docker.io/library/*:stable").
  always_revalidate = []

  # When a registry cannot be reached (or answers 429/5xx), the last known digest of a tag
  # is served (marked stale) for at most this long after it was last fetched or revalidated;
  # so is the last tags/list or referrers answer.
  max_staleness = "24h"

  # An upstream 404 for a manifest is remembered this long and answered from memory
  # (per registry, repository, reference and credentials); for a tag only where its
  # freshness window is above 0. "0s" turns it off.
  negative_ttl = "15s"

[content]
  # Serve containerd's content API on a unix socket, over the same store, so that containerd
  # keeps its blobs here: each blob on disk once, and a blob containerd garbage-collected
  # stays cached so that its next pull downloads nothing. Enable it together with this in
  # containerd's config.toml (start this daemon before containerd):
  #   disabled_plugins = ["io.containerd.content.v1.content"]
  #   [proxy_plugins.blobcache]
  #     type = "content"
  #     address = "/run/containerd-blobcache/content.sock"
  # containerd then depends on this daemon for every image operation. Off: mirror only.
  enabled = false

  # The socket. Its directory is created 0700 (0750 with socket_group) when missing; a socket
  # file left by a daemon that died is replaced, one another process serves is not.
  address = "/run/containerd-blobcache/content.sock"

  # Group (name or numeric gid) given access to the socket: mode 0660 instead of 0600 (an
  # existing directory is left as it is and must let the group in). Only containerd needs the
  # socket, and it runs as root: leave it empty unless containerd does not.
  socket_group = ""

  # On SIGTERM/SIGINT, time given to content requests in flight (containerd's writes and
  # reads) before they are cut. The socket is closed first, so containerd fails fast
  # meanwhile rather than waiting.
  shutdown_timeout = "5s"

  # containerd (shared content policy, its default) asks the content API's Info before it
  # downloads a blob. For a blob that a manifest the mirror served in the last ten minutes
  # lists, the daemon then fills it through the mirror (as a blob GET of that client would)
  # and answers found once it is stored: containerd downloads nothing and writes nothing back.
  # This bounds how long Info waits for that fill: containerd asks Info inside its metadata
  # database's write transaction, so its other metadata writes wait meanwhile. Past it, or if
  # the fill fails, Info answers not found and containerd downloads the blob through the
  # mirror, joining the fill in progress (the fill is not repeated). The default covers a
  # layer of a few hundred MB on a fast link and keeps containerd's stall short; raise it for
  # slow links if the pulls matter more than other metadata writes. "0s" turns it off.
  info_fill_wait = "5s"

[diff]
  # Serve containerd's diff API (Apply, Compare) on the content socket (content.address; so
  # content.enabled must be true too): containerd unpacks layers through this daemon, which
  # reads them from its own disk instead of 32 KiB per content API call. Needs root's
  # capabilities (CAP_SYS_ADMIN, CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID,
  # CAP_MKNOD, CAP_SETFCAP): it writes into containerd's snapshot directories and mounts.
  # Enable it together with this in containerd's config.toml (version 3, containerd >= 2.0):
  #   [proxy_plugins.blobcache-diff]
  #     type = "diff"
  #     address = "/run/containerd-blobcache/content.sock"
  #   [[plugins."io.containerd.transfer.v1.local".unpack_config]]
  #     platform = "linux/amd64"
  #     snapshotter = "overlayfs"
  #     differ = "blobcache-diff"
  #   [plugins."io.containerd.service.v1.diff-service"]
  #     default = ["blobcache-diff", "walking"]
  enabled = false

  # containerd's own socket. Compare (a layer made from two snapshots: ctr snapshot diff,
  # commits) writes its layer through containerd's content API, in the caller's namespace
  # and lease, so that containerd lists it there; the bytes still land in this daemon's
  # store. Dialled when a Compare needs it, not at start.
  containerd_address = "/run/containerd/containerd.sock"

[metrics]
  # Listener of /metrics (Prometheus, containerd_blobcache_*), /healthz (the process
  # answers) and /readyz (the listeners accept; 503 while starting or shutting down). Keep
  # it on loopback unless something off the node must scrape it. Empty: no listener.
  address = "127.0.0.1:5056"

[debug]
  # Loopback host:port of a debug listener serving Go's pprof handlers under /debug/pprof/
  # (goroutine counts and stacks, heap, CPU profiles). Empty: off. Loopback addresses only:
  # profiles reveal internals and cost CPU.
  address = ""

[admin]
  # Unix socket (mode 0600, root only) of the admin API used by the stats, ls, gc, verify,
  # rm and prefetch commands while the daemon runs. Its directory is created when missing.
  address = "/run/containerd-blobcache/admin.sock"

[peer]
  # The cluster tier (docs/CLUSTER.md): nodes fetch blobs from each other. A blob's owner is
  # chosen by rendezvous hashing of its digest over the live peers; on a miss this node asks
  # the owner, which fetches from the registry once and streams to every node that asks.
  # A peer that is slow or gone is skipped at once: the registry is always the fallback.
  enabled = false

  # host:port of the peer listener, on the node's address (not loopback when the peers are
  # other hosts). Required when enabled.
  listen = ""

  # This node's address as the peer lists name it (static_peers, or dns_name's records with
  # dns_port), so that it finds itself there. Empty: listen.
  advertise = ""

  # Peers as host:port (this node may be among them).
  static_peers = []

  # A DNS name resolved every dns_interval (a Kubernetes headless Service); each A/AAAA
  # record with dns_port is a peer. Used together with static_peers when both are set.
  dns_name = ""
  # Port of the peers found through dns_name.
  dns_port = 5057
  # How often dns_name is resolved again.
  dns_interval = "10s"
  # "host:port" of the one DNS server to ask for dns_name. Empty: the system resolver.
  dns_server = ""

  # File holding the shared key with which peers sign their requests and answers: text of at
  # least 32 characters once surrounding whitespace is trimmed (head -c 32 /dev/urandom |
  # base64), the same on every node. Set it, or the three TLS files, or both: the listener answers only peers that
  # prove themselves.
  key_file = ""

  # Mutual TLS: this node's certificate and key (with the node's address as IP SAN), and
  # the CA that signed every peer's certificate. All three or none.
  tls_cert_file = ""
  # The private key of tls_cert_file.
  tls_key_file = ""
  # The CA every peer's certificate (client and server) must chain to.
  tls_ca_file = ""

  # Time a peer has to accept a connection; past it the registry is asked instead and the
  # peer is marked down.
  connect_timeout = "250ms"

  # A peer that sends no byte for this long is abandoned (before its first byte: the
  # registry is asked; after: the rest comes from the registry with a Range request).
  stall_timeout = "2s"

  # How long a peer that failed is left out of the placement.
  down_for = "30s"
`
