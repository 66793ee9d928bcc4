// Package httperror writes envd's JSON error body for plain HTTP endpoints
// (spec http.md §1.3): {"code": <status>, "message": "<text>"} and a newline.
package httperror

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Error is an HTTP status with the message shown to the client.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

// New builds an Error with a formatted message.
func New(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

type body struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// Write sends the error body with the given status.
func Write(w http.ResponseWriter, status int, message string) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	w.WriteHeader(status)
	b, _ := json.Marshal(body{Code: status, Message: message})
	b = append(b, '\n')
	_, _ = w.Write(b)
}

// WriteError sends e.
func WriteError(w http.ResponseWriter, e *Error) { Write(w, e.Status, e.Message) }
