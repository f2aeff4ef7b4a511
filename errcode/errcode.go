// Package errcode defines the named errors that instarfs reports to users.
//
// Every failure that reaches a user carries a stable upper-case code (for example
// QCOW2_ENCRYPTED or BACKING_PATH_OUTSIDE_ROOT) and a message that names the input
// that caused it. The worker and the host share these codes. One table (table.go)
// says, for each code, the errno the mount returns for it, whether it is
// transient, whether a worker may send it, and what it means; docs/errors.md and
// the errno table of docs/mount.md list the same codes, which a test checks.
package errcode

import (
	"errors"
	"fmt"
)

// Code names a kind of failure. Users match on codes: they never change meaning
// and are never removed.
type Code string

// Error is a failure with a stable code.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// New returns an *Error with the given code and formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Of returns the code of the first *Error in err's chain, or INTERNAL when there
// is none.
func Of(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// From returns err as an *Error: the first *Error in its chain with err's whole
// message, or an INTERNAL one.
func From(err error) *Error {
	return &Error{Code: Of(err), Message: err.Error()}
}
