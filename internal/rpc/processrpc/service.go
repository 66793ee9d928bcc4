// Package processrpc implements the process.Process Connect service on top
// of the process manager.
package processrpc

import (
	"github.com/envd/envd/gen/process/processconnect"
)

// Service implements process.Process. Until the process manager lands,
// every RPC answers unimplemented.
type Service struct {
	processconnect.UnimplementedProcessHandler
}
