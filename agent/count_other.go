//go:build !linux

package agent

import "context"

// countFiles counts regular files under dir (see countFilesReadDir).
func countFiles(ctx context.Context, dir string, depth int) (int64, error) {
	return countFilesReadDir(ctx, dir, depth)
}
