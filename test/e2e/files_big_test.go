package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/envdtest"
)

// rssLimit is the most envd may hold resident while moving a 1 GiB file.
const rssLimit = 64 << 20

// rssSampler records the peak VmRSS of a process.
type rssSampler struct {
	pid  int
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak int64
	n    int
}

func sampleRSS(t testing.TB, pid int) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, ok := vmRSS(pid); ok {
				s.mu.Lock()
				s.peak = max(s.peak, v)
				s.n++
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops sampling and returns the peak and the number of samples.
func (s *rssSampler) finish() (int64, int) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.n
}

func vmRSS(pid int) (int64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// patternReader yields n bytes of incompressible data cheaply: a random
// 1 MiB block repeated.
func patternReader(n int64) io.Reader {
	block := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	return io.LimitReader(&repeat{block: block}, n)
}

type repeat struct {
	block []byte
	off   int
}

func (r *repeat) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.block[r.off:])
		n += c
		r.off = (r.off + c) % len(r.block)
	}
	return n, nil
}

func uploadStream(t testing.TB, e *envdtest.Envd, path string, body io.Reader, size int64) {
	t.Helper()
	req, _ := http.NewRequest("POST", filesURL(e, "path", path), body)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.ContentLength = size
	resp, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
}

// downloadStream returns the SHA-256 and size of the (decoded) body.
func downloadStream(t testing.TB, e *envdtest.Envd, path, acceptEncoding string) ([]byte, int64) {
	t.Helper()
	req, _ := http.NewRequest("GET", filesURL(e, "path", path), nil)
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	resp, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("download: %d", resp.StatusCode)
	}
	var r io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil), n
}

// A 1 GiB upload and a 1 GiB download (plus smaller multipart and gzip
// transfers) move through envd
// while its resident memory stays under 64 MiB: nothing is buffered whole.
func TestTransfer_1GiB_MemoryBounded(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	p := filepath.Join(dir, "big.bin")
	const size = 1 << 30
	want := sha256.New()
	s := sampleRSS(t, e.Pid())
	uploadStream(t, e, p, io.TeeReader(patternReader(size), want), size)
	upPeak, upN := s.finish()
	if st, err := os.Stat(p); err != nil || st.Size() != size {
		t.Fatalf("uploaded file: %v %v", st, err)
	}

	s = sampleRSS(t, e.Pid())
	sum, n := downloadStream(t, e, p, "")
	downPeak, downN := s.finish()
	if n != size || !bytes.Equal(sum, want.Sum(nil)) {
		t.Fatalf("identity download: %d bytes, hash mismatch %v", n, !bytes.Equal(sum, want.Sum(nil)))
	}

	// A 256 MiB multipart upload (chunked, as the Wrenn host streams it)
	// and its gzip download.
	p2 := filepath.Join(dir, "multi.bin")
	const size2 = 256 << 20
	want2 := sha256.New()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		w, _ := mw.CreateFormFile("file", "upload")
		_, err := io.Copy(w, io.TeeReader(patternReader(size2), want2))
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	s = sampleRSS(t, e.Pid())
	req, _ := http.NewRequest("POST", filesURL(e, "path", p2), pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("multipart upload: %d", resp.StatusCode)
	}
	mpPeak, mpN := s.finish()
	s = sampleRSS(t, e.Pid())
	sum, n = downloadStream(t, e, p2, "gzip")
	gzPeak, gzN := s.finish()
	if n != size2 || !bytes.Equal(sum, want2.Sum(nil)) {
		t.Fatalf("gzip download: %d bytes", n)
	}
	t.Logf("peak VmRSS: 1 GiB upload %d MiB (%d samples), 1 GiB download %d MiB (%d), 256 MiB multipart upload %d MiB (%d), 256 MiB gzip download %d MiB (%d)",
		upPeak>>20, upN, downPeak>>20, downN, mpPeak>>20, mpN, gzPeak>>20, gzN)
	for name, v := range map[string]int64{"upload": upPeak, "download": downPeak, "multipart upload": mpPeak, "gzip download": gzPeak} {
		if v == 0 {
			t.Fatalf("%s: no RSS sample", name)
		}
		if v >= rssLimit {
			t.Errorf("%s: envd's RSS reached %d MiB (limit %d MiB)", name, v>>20, rssLimit>>20)
		}
	}
	fsNoTemps(t, dir)
}

const benchSize = 256 << 20

func BenchmarkUpload256MiB(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	p := filepath.Join(b.TempDir(), "bench.bin")
	b.SetBytes(benchSize)
	for b.Loop() {
		uploadStream(b, e, p, patternReader(benchSize), benchSize)
	}
}

// Uploads over h2c (prior knowledge), as a gRPC client's: one stream of
// 256 MiB, and four streams of 64 MiB at once on one connection (they
// share the connection's receive window). The server's HTTP/2 receive
// windows bound what envd buffers per connection (internal/server).
func BenchmarkUploadH2C256MiB(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	c := h2cClient()
	dir := b.TempDir()
	for _, streams := range []int{1, 4} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				var wg sync.WaitGroup
				for i := range streams {
					wg.Add(1)
					go func() {
						defer wg.Done()
						size := int64(benchSize / streams)
						req, _ := http.NewRequest("POST", filesURL(e, "path", filepath.Join(dir, fmt.Sprintf("h2-%d.bin", i))), patternReader(size))
						req.Header.Set("Content-Type", "application/octet-stream")
						req.ContentLength = size
						resp, err := c.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
							b.Errorf("upload: %s %d %s", resp.Proto, resp.StatusCode, body)
						}
					}()
				}
				wg.Wait()
			}
		})
	}
}

func h2cClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols), DisableCompression: true, MaxConnsPerHost: 1}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

func BenchmarkDownload256MiB(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	p := filepath.Join(b.TempDir(), "bench.bin")
	uploadStream(b, e, p, patternReader(benchSize), benchSize)
	b.SetBytes(benchSize)
	for b.Loop() {
		if _, n := downloadStream(b, e, p, ""); n != benchSize {
			b.Fatal(n)
		}
	}
}

func BenchmarkDownloadGzip256MiB(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	p := filepath.Join(b.TempDir(), "bench.bin")
	uploadStream(b, e, p, patternReader(benchSize), benchSize)
	b.SetBytes(benchSize)
	for b.Loop() {
		if _, n := downloadStream(b, e, p, "gzip"); n != benchSize {
			b.Fatal(n)
		}
	}
}

func BenchmarkListDir10k(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	dir := b.TempDir()
	for i := range 10000 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("entry-%05d.txt", i)), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	fs := e.Filesystem()
	b.ResetTimer()
	for b.Loop() {
		resp, err := fs.ListDir(context.Background(), connect.NewRequest(&filesystem.ListDirRequest{Path: dir}))
		if err != nil || len(resp.Msg.Entries) != 10000 {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/list")
}
