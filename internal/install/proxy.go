package install

import (
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
)

// DiffPluginName is the [proxy_plugins] entry of type diff install writes: the differ that
// unpack_config and the diff service's default list name.
const DiffPluginName = "blobcache-diff"

// The transfer service's unpack configuration and the diff service, in containerd 2.x.
var (
	unpackConfigKey = []string{"plugins", "io.containerd.transfer.v1.local", "unpack_config"}
	diffServiceKey  = []string{"plugins", "io.containerd.service.v1.diff-service"}
)

// unpackSnapshotter is the snapshotter whose unpacks go to the daemon: containerd's default,
// the one whose layout the applier's fast path (writing into the upper directory) knows.
const unpackSnapshotter = "overlayfs"

// proxyVersionError is why a containerd 1.x config (version 2) cannot run proxy mode.
func proxyVersionError(version int64) error {
	return fmt.Errorf("config version %d is containerd 1.x: proxy mode needs containerd 2.0 or later (config version 3 or 4), whose transfer service sends unpacks to the daemon's diff plugin (unpack_config differ); without it every layer would be read through the content API 32 KiB per call. Upgrade containerd and run `containerd config migrate`, or use --mode mirror: %w",
		version, errdefs.ErrFailedPrecondition)
}

// analyzeProxy lists what proxy mode needs in a version 3+ config: containerd's content store
// disabled, the daemon's content and diff APIs as proxy plugins, the diff plugin chosen for
// unpacks (unpack_config) and first for the diff service.
func (c configCheck) analyzeProxy(doc map[string]any, add func(Finding, func([]string) ([]string, error))) {
	disabled, _ := doc["disabled_plugins"].([]any)
	var disabledNames []string
	for _, d := range disabled {
		s, _ := d.(string)
		disabledNames = append(disabledNames, s)
	}
	if !slices.Contains(disabledNames, ContentPluginID) {
		add(Finding{
			Problem: fmt.Sprintf("disabled_plugins does not list %q: containerd keeps its own content store and does not use the daemon's", ContentPluginID),
			Fix:     fmt.Sprintf("add %q to disabled_plugins", ContentPluginID),
		}, func(lines []string) ([]string, error) {
			return setTopLevel(lines, "disabled_plugins", quoteList(append(disabledNames, ContentPluginID)))
		})
	}
	proxies, _ := doc["proxy_plugins"].(map[string]any)
	c.checkProxyPlugin(proxies, "content", ProxyPluginName, "containerd does not reach the daemon's content API", add)
	differ := c.checkProxyPlugin(proxies, "diff", DiffPluginName, "containerd cannot send unpacks to the daemon", add)
	c.checkUnpackConfig(doc, differ, add)
	c.checkDiffService(doc, differ, add)
}

// checkProxyPlugin finds the [proxy_plugins] entry of type typ at the content socket, and
// returns its name (name when it is to be added).
func (c configCheck) checkProxyPlugin(proxies map[string]any, typ, name, without string, add func(Finding, func([]string) ([]string, error))) string {
	for _, n := range sortedKeys(proxies) {
		pm, _ := proxies[n].(map[string]any)
		if pm["type"] == typ && pm["address"] == c.contentAddress {
			return n
		}
	}
	if p, ok := proxies[name].(map[string]any); ok {
		add(Finding{Problem: fmt.Sprintf("[proxy_plugins.%s] exists with type %v and address %v, not type %q at %q: change it by hand", name, p["type"], p["address"], typ, c.contentAddress)}, nil)
		return name
	}
	add(Finding{
		Problem: fmt.Sprintf("no [proxy_plugins] entry of type %q at %q: %s", typ, c.contentAddress, without),
		Fix:     fmt.Sprintf("add [proxy_plugins.%s] type = %q, address = %q", name, typ, c.contentAddress),
	}, func(lines []string) ([]string, error) {
		return appendTable(lines, []string{"proxy_plugins", name}, []string{
			"type = " + quote(typ), "address = " + quote(c.contentAddress),
		}), nil
	})
	return name
}

// checkUnpackConfig makes differ the applier of the host platform's overlayfs unpacks. Without
// unpack_config, containerd unpacks with its default entry (host platform, overlayfs, the
// built-in differ): install writes that entry with the differ. An existing entry for the host
// platform and overlayfs gets the differ set.
func (c configCheck) checkUnpackConfig(doc map[string]any, differ string, add func(Finding, func([]string) ([]string, error))) {
	host := platforms.DefaultSpec()
	raw, present := lookup(doc, unpackConfigKey...)
	entries, _ := raw.([]map[string]any)
	for i, e := range entries {
		ps, _ := e["platform"].(string)
		p, err := platforms.Parse(ps)
		if err != nil || !platforms.Only(host).Match(p) {
			continue
		}
		if sn, _ := e["snapshotter"].(string); sn != unpackSnapshotter {
			continue
		}
		if d, _ := e["differ"].(string); d == differ {
			return
		}
		add(Finding{
			Problem: fmt.Sprintf("%s entry %d (%s, %s) does not name differ %q: unpacks read every layer through the content API instead of the daemon applying it from its disk", tableName(unpackConfigKey), i+1, ps, unpackSnapshotter, differ),
			Fix:     fmt.Sprintf("set differ = %q in that entry", differ),
		}, func(lines []string) ([]string, error) {
			ranges := arrayTableRanges(lines, unpackConfigKey)
			if len(ranges) != len(entries) {
				return nil, fmt.Errorf("%s is not written as [[...]] tables: change it by hand", tableName(unpackConfigKey))
			}
			return setKeyIn(lines, ranges[i][0], ranges[i][1], "["+tableName(unpackConfigKey)+"]", "differ", quote(differ))
		})
		return
	}
	if present && entries == nil {
		add(Finding{Problem: fmt.Sprintf("%s is not a list of tables install can read: add an entry with differ = %q by hand", tableName(unpackConfigKey), differ)}, nil)
		return
	}
	platform := platforms.Format(host)
	add(Finding{
		Problem: fmt.Sprintf("%s has no entry for %s and %s naming differ %q: unpacks read every layer through the content API instead of the daemon applying it from its disk", tableName(unpackConfigKey), platform, unpackSnapshotter, differ),
		Fix:     fmt.Sprintf("add [%s] platform = %q, snapshotter = %q, differ = %q", tableName(unpackConfigKey), platform, unpackSnapshotter, differ),
	}, func(lines []string) ([]string, error) {
		return appendArrayTable(lines, unpackConfigKey, []string{
			"platform = " + quote(platform), "snapshotter = " + quote(unpackSnapshotter), "differ = " + quote(differ),
		}), nil
	})
}

// checkDiffService puts differ first in the diff service's default list (used by clients of
// the Diff API: ctr image pull --local, ctr snapshot diff), before what was there (containerd's
// default: walking).
func (c configCheck) checkDiffService(doc map[string]any, differ string, add func(Finding, func([]string) ([]string, error))) {
	current := []string{"walking"}
	if v, ok := lookup(doc, append(diffServiceKey, "default")...); ok {
		list, _ := v.([]any)
		current = current[:0]
		for _, d := range list {
			s, _ := d.(string)
			current = append(current, s)
		}
	}
	if len(current) > 0 && current[0] == differ {
		return
	}
	was := quoteList(current)
	want := append([]string{differ}, slices.DeleteFunc(current, func(s string) bool { return s == differ })...)
	add(Finding{
		Problem: fmt.Sprintf("%s default is %s: clients of the Diff API (ctr image pull --local) unpack without the daemon", tableName(diffServiceKey), was),
		Fix:     fmt.Sprintf("set default = %s", quoteList(want)),
	}, func(lines []string) ([]string, error) {
		return setKey(lines, diffServiceKey, "default", quoteList(want))
	})
}
