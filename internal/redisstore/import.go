package redisstore

import (
	"context"
	_ "embed"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

var (
	//go:embed import.lua
	importLua    string
	importScript = redis.NewScript(importLua)
)

// ImportBatch is how many records Import writes in one pipeline.
const ImportBatch = 1000

// Import creates, at generation 1, those of recs that do not exist yet, and
// leaves the others as they are; it returns how many it created. It writes
// ImportBatch records per pipeline (one script per record, then one ZADD of
// the batch's new ids to the index), so that a large set of credentials,
// with their tokens if they have some, is loaded at the speed of Redis
// rather than one round trip per credential: a migration, a restore, or a
// benchmark's seed. No lease is taken, since no replica can be refreshing a
// record that does not exist, and no event is published, since none can
// have it cached. Records are sealed like Commit's; their Generation and
// Pending are ignored.
//
// A failure stops Import after the records written so far (they stay
// created: calling Import again with the same records creates only the
// rest); the count includes them. An index write that fails is queued and
// retried as Commit's are.
func (s *Store) Import(ctx context.Context, recs []*broker.Record) (created int, err error) {
	for len(recs) > 0 {
		n := min(len(recs), ImportBatch)
		k, err := s.importBatch(ctx, recs[:n])
		created += k
		if err != nil {
			return created, err
		}
		recs = recs[n:]
	}
	return created, nil
}

func (s *Store) importBatch(ctx context.Context, recs []*broker.Record) (int, error) {
	data := make([][]byte, len(recs))
	for i, rec := range recs {
		if err := checkID(rec.ID); err != nil {
			return 0, err
		}
		b, err := s.encode(rec)
		if err != nil {
			return 0, err
		}
		data[i] = b
	}
	// EVALSHA, and EVAL for those the server did not know the script for
	// (not loaded yet, or flushed; another Import may load it meanwhile,
	// so some of one pipeline's EVALSHA may fail and others not).
	cmds := make([]*redis.Cmd, len(recs))
	todo := make([]int, len(recs))
	for i := range todo {
		todo[i] = i
	}
	for _, sha := range []bool{true, false} {
		_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range todo {
				keys := []string{s.recordKey(recs[i].ID)}
				if sha {
					cmds[i] = importScript.EvalSha(ctx, p, keys, data[i])
				} else {
					cmds[i] = importScript.Eval(ctx, p, keys, data[i])
				}
			}
			return nil
		})
		var again []int
		for _, i := range todo {
			if err := cmds[i].Err(); sha && isNoScript(err) {
				again = append(again, i)
			}
		}
		if todo = again; len(todo) == 0 {
			break
		}
	}
	var ids []string
	var firstErr error
	for i, c := range cmds {
		v, err := c.Int64()
		switch {
		case err != nil && firstErr == nil:
			firstErr = fmt.Errorf("redisstore: import %q: %w", recs[i].ID, err)
		case err == nil && v == 1:
			ids = append(ids, recs[i].ID)
		}
	}
	if len(ids) > 0 {
		if _, err := s.zaddIDs(ctx, ids); err != nil {
			s.ix.failures.Add(1)
			for _, id := range ids {
				s.queueIndex(id)
			}
		}
	}
	return len(ids), firstErr
}
