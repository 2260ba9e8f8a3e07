// Package traffic names how the daemon answered a request (Result, and the ResultHeader the
// mirror sends it in) and counts the answers: each request is observed once, by the surface
// that answered it, and that one observation feeds both the admin API's stats and the
// Prometheus metrics, so that the two never disagree.
package traffic
