package handover

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// MaxRecordBytes bounds the record on both sides: the largest state it
// carries is processes' unclaimed output and replay rings (32 MiB and
// 64 MiB shared budgets) and polling watchers' buffers, far below it. The
// incoming side never reads more than this from the memory file.
const MaxRecordBytes = 256 << 20

// errRecordTooLarge: the state would not fit in MaxRecordBytes.
var errRecordTooLarge = errors.New("handover record larger than its limit")

// encode stamps rec with the lowest schema that expresses it and
// marshals it.
func encode(rec *handoverpb.Record) ([]byte, error) {
	rec.Schema = schemaFor(rec)
	b, err := proto.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode the record: %w", err)
	}
	if len(b) > MaxRecordBytes {
		return nil, fmt.Errorf("%w (%d MiB)", errRecordTooLarge, MaxRecordBytes>>20)
	}
	return b, nil
}

// decode parses a record and checks its schema (§8.7, §8.16): a schema of
// 0 is not a record, one above MaxSchema is too new for this image.
func decode(b []byte) (*handoverpb.Record, error) {
	if len(b) > MaxRecordBytes {
		return nil, fmt.Errorf("%w (%d MiB)", errRecordTooLarge, MaxRecordBytes>>20)
	}
	rec := &handoverpb.Record{}
	if err := proto.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("decode the record: %w", err)
	}
	switch {
	case rec.Schema == 0:
		return nil, errors.New("decode the record: no schema")
	case rec.Schema > MaxSchema:
		return nil, fmt.Errorf("record schema %d is newer than this image reads (%d)", rec.Schema, MaxSchema)
	}
	return rec, nil
}

// wipe overwrites b: the encoded record holds the access token.
func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
