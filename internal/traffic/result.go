package traffic

// ResultHeader is the mirror's response header that tells the client (and the operator with
// curl -v) how a request was answered.
const ResultHeader = "X-Blobcache-Result"

// Result is how a request was answered.
type Result string

const (
	// Hit was served from the store (content API: Info or Read of a blob the store has).
	Hit Result = "hit"
	// Miss was fetched upstream and stored (content API: Info or Read of a blob it has not).
	Miss Result = "miss"
	// Peer was a miss whose bytes came from another node of the cluster tier (and were
	// stored).
	Peer Result = "peer"
	// Bypass was fetched upstream and not stored: the store could not help.
	Bypass Result = "bypass"
	// Stale is a tag served from the store because upstream could not revalidate it.
	Stale Result = "stale"
	// Negative is a manifest 404 that upstream gave a moment ago, answered again.
	Negative Result = "negative"
	// Error is a request answered with an error.
	Error Result = "error"
	// None is a request about no content: GET /v2/, or a content API call other than Info
	// and Read that succeeded.
	None Result = "none"
)
