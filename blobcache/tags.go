package blobcache

import (
	"context"
	"fmt"
)

// PutTag records what registry/repository:tag resolved to.
func (s *Store) PutTag(ctx context.Context, registry, repository, tag string, rec TagRecord) error {
	if err := validateTagKey(registry, repository, tag); err != nil {
		return err
	}
	if err := validateDigest(rec.Digest); err != nil {
		return err
	}
	if err := s.idx.putTag(tagKey(registry, repository, tag), tagRecord(rec)); err != nil {
		return fmt.Errorf("record tag: %w", err)
	}
	return nil
}

// GetTag returns what registry/repository:tag resolved to when last recorded.
func (s *Store) GetTag(ctx context.Context, registry, repository, tag string) (TagRecord, error) {
	if err := validateTagKey(registry, repository, tag); err != nil {
		return TagRecord{}, err
	}
	rec, err := s.idx.tag(tagKey(registry, repository, tag))
	if err != nil {
		return TagRecord{}, fmt.Errorf("tag %s/%s:%s: %w", registry, repository, tag, err)
	}
	return TagRecord(rec), nil
}
