package main

import (
	"errors"
	"strings"

	"github.com/containerd/errdefs"
)

// forTerminal is err's message for a person. The daemon's packages wrap their errors around
// containerd's errdefs sentinels so that code can test them (errdefs.IsInvalidArgument), and
// the sentinel's text ends the message ("unknown key mirror.adress: invalid argument"): a
// category for code that tells a person nothing the message has not said. Such a trailing
// text is removed when err really wraps that sentinel, so that the same words from elsewhere
// stay. "not found", "already exists", "permission denied", "not implemented" and
// "unauthorized" are kept: they are the message's point ("tag r/a:v1: not found").
func forTerminal(err error) string {
	msg := err.Error()
	categories := []error{
		errdefs.ErrInvalidArgument, errdefs.ErrUnavailable, errdefs.ErrInternal, errdefs.ErrUnknown,
		errdefs.ErrDataLoss, errdefs.ErrAborted, errdefs.ErrFailedPrecondition, errdefs.ErrConflict,
		errdefs.ErrOutOfRange, errdefs.ErrResourceExhausted, errdefs.ErrNotModified,
	}
	// An error may end with several ("...: unavailable: internal"); each pass takes one.
	for trimmed := true; trimmed; {
		trimmed = false
		for _, c := range categories {
			suffix := ": " + c.Error()
			if strings.HasSuffix(msg, suffix) && errors.Is(err, c) {
				msg = strings.TrimSuffix(msg, suffix)
				trimmed = true
			}
		}
	}
	return msg
}
