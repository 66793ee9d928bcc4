// Package client is a Go client for envd, the guest agent of a sandbox
// microVM. It wraps every envd endpoint with typed methods:
//
//   - control: Health, Metrics, Envs, Init, PrepareSnapshot;
//   - processes: Start (pipes or a PTY; user, cwd, env, tag, timeout,
//     stdin), Run, Connect by pid or tag, List, SendStdin, SendPTY,
//     StreamInput, CloseStdin, Resize, Signal, Kill — a started or connected
//     process is a *Process with streaming Stdout, Stderr and PTY readers
//     and Wait for its ExitStatus;
//   - files: Upload, UploadFiles, WriteFile, OpenFile, Download, ReadFile
//     (streamed both ways, optional gzip, metadata, progress callbacks, raw
//     or multipart), Compose, and signed DownloadURL/UploadURL;
//   - filesystem: Stat, ListDir, MakeDir, Move, Remove;
//   - watching: WatchDir (a channel), Watch (an iterator), and polling
//     watchers (CreateWatcher).
//
// A Client acts as one Unix user of the guest (WithUser, or As for a
// derived client); without one envd's default user applies. Paths are
// resolved by envd for that user: "~/x" and relative paths are under the
// user's home.
//
// Errors returned by methods are *Error values carrying both the HTTP
// status and the Connect code, so callers can use errors.As, or the
// IsNotFound, IsAlreadyExists and IsUnauthenticated helpers.
//
// RPCs use the Connect protocol over HTTP/1.1 with the binary protobuf codec
// by default (WithJSONCodec for JSON). The default transport (NewTransport)
// is tuned for a guest reached over a VM's TAP network; WithHTTPClient
// replaces it.
//
// The signing subpackage computes the signatures of file URLs for hosts
// that hand out URLs without handing out the access token.
package client
