package client_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/envd/envd/client"
)

// The benchmarks use the envd TestMain started (ENVD_ADDR), on this
// machine: they measure the client and envd, not a network.

func benchClient(b *testing.B) *client.Client {
	b.Helper()
	c, err := client.New(os.Getenv("ENVD_ADDR"))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkRun measures a full start-to-end round trip of a trivial
// process.
func BenchmarkRun(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	for b.Loop() {
		res, err := c.Run(ctx, "true", nil)
		if err != nil || !res.Success() {
			b.Fatal(res, err)
		}
	}
}

func benchTransfer(b *testing.B, gzip bool) {
	c := benchClient(b)
	ctx := context.Background()
	const size = 64 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	path := filepath.Join(b.TempDir(), "bench.bin")
	b.SetBytes(2 * size)
	for b.Loop() {
		if _, err := c.Upload(ctx, path, bytes.NewReader(data), &client.UploadOptions{Size: size, Gzip: gzip}); err != nil {
			b.Fatal(err)
		}
		n, err := c.Download(ctx, path, io.Discard, &client.DownloadOptions{Gzip: gzip})
		if err != nil || n != size {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkTransfer uploads and downloads 64 MiB (throughput counts both).
func BenchmarkTransfer(b *testing.B) { benchTransfer(b, false) }

// BenchmarkTransferGzip is the same with gzip both ways.
func BenchmarkTransferGzip(b *testing.B) { benchTransfer(b, true) }
