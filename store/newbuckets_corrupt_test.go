package store

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A garbled fleet command or pull-progress record makes the journal corrupt
// at Open, naming the record, as any other record does: it is not found
// later by the agent in the middle of an update.
func TestCorruptCommandAndPullRecords(t *testing.T) {
	for _, tt := range []struct{ name, bucket, sub, key, val, want string }{
		{"command garbage", bucketCommands, keyCmdIDs, "c1", "{not json", bucketCommands + "/c1"},
		{"command bad state", bucketCommands, keyCmdIDs, "c2", `{"id":"c2","action":"update","state":"maybe"}`, bucketCommands + "/c2"},
		{"pull garbage", bucketImages, "", "sha256:ab", "\x00\xff", bucketImages + "/sha256:ab"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := fillJournal(t, 10, 1)
			rawBolt(t, path, func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte(tt.bucket))
				if err != nil {
					return err
				}
				if tt.sub != "" {
					if b, err = b.CreateBucketIfNotExists([]byte(tt.sub)); err != nil {
						return err
					}
				}
				return b.Put([]byte(tt.key), []byte(tt.val))
			})
			checkReset(t, path, tt.want)
		})
	}
}
