package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// DiffSpec lists what differs between two specs, one line per difference, for people
// (the reload log, `mxlb status`, `mxlb spec apply`, the event list):
//
//   - pool mx                                        added
//   - frontend smtp-in                               removed
//   - pool mx: backend 198.18.0.5:25
//     ~ pool mx: backend 198.18.0.5:25: weight 10 -> 20
//     ~ pool mx: health.interval 2s -> 1s
//     ~ dns: zone mail.example: ttl 30 -> 60
//
// Both specs are compared with their defaults applied (on copies; the arguments are not
// changed), so a key left out that equals its default is no difference; an unset weight
// counts as DefaultWeight. Items are matched by name (pools, frontends, zones), address
// (backends, VIPs) or, for DNS records, by name, type and target, so a reordered list is no
// difference either. The order is stable: sections (pools, frontends, VIPs, DNS), then items
// sorted by their key. Nil for equal specs.
func DiffSpec(old, new Spec) []string {
	o, n := normalized(old), normalized(new)
	var d differ
	diffList(&d, "", "pool", o.Pools, n.Pools, func(p Pool) string { return p.Name },
		func(ctx string, a, b Pool) {
			d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b))
			// A backend by its address, and its name when it has one: the operator said
			// `mxlb backend drain mx mta3`, and the event read only "backend 198.18.1.3:25".
			diffListTitled(&d, ctx+": ", "backend", a.Backends, b.Backends, func(x Backend) string { return x.Address },
				func(x Backend) string {
					if x.Name != "" {
						return x.Address + " (" + x.Name + ")"
					}
					return x.Address
				},
				func(ctx string, a, b Backend) { d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b)) })
		})
	diffList(&d, "", "frontend", o.Frontends, n.Frontends, func(f Frontend) string { return f.Name },
		func(ctx string, a, b Frontend) { d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b)) })
	diffList(&d, "", "vip", o.VIPs, n.VIPs, func(v VIP) string { return v.Address },
		func(ctx string, a, b VIP) { d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b)) })
	switch {
	case o.BGP == nil && n.BGP != nil:
		d.add("+ bgp")
	case o.BGP != nil && n.BGP == nil:
		d.add("- bgp")
	case o.BGP != nil:
		d.fields("bgp", "", reflect.ValueOf(*o.BGP), reflect.ValueOf(*n.BGP))
		diffList(&d, "bgp: ", "peer", o.BGP.Peers, n.BGP.Peers, func(p BGPPeer) string { return p.Address },
			func(ctx string, a, b BGPPeer) { d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b)) })
	}
	switch {
	case o.DNS == nil && n.DNS != nil:
		d.add("+ dns")
	case o.DNS != nil && n.DNS == nil:
		d.add("- dns")
	case o.DNS != nil:
		d.fields("dns", "", reflect.ValueOf(*o.DNS), reflect.ValueOf(*n.DNS))
		diffList(&d, "dns: ", "zone", o.DNS.Zones, n.DNS.Zones, func(z Zone) string { return z.Name },
			func(ctx string, a, b Zone) {
				d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b))
				diffList(&d, ctx+": ", "record", a.Records, b.Records, recordKey,
					func(ctx string, a, b Record) { d.fields(ctx, "", reflect.ValueOf(a), reflect.ValueOf(b)) })
			})
	}
	return d.lines
}

// Destructive lists the reasons why replacing the spec old with new is dangerous enough to
// need the operator's insistence (`mxlb spec apply --force`); nil when it is not. A change is
// destructive when it removes a frontend, a pool, a VIP or a DNS zone, or when it takes more
// than a quarter of a pool's backends in rotation out of rotation. Out of rotation means
// removed, or set to drain or maint, or to weight 0: for the mail that still arrives, a
// backend set to maint is as gone as a removed one. In rotation means enabled with a weight
// above 0 in old. A renamed item counts as removed (and added).
func Destructive(old, new Spec) []string {
	o, n := normalized(old), normalized(new)
	var out []string
	removed := func(kind string, olds, news []string) {
		for _, k := range olds {
			if !slices.Contains(news, k) {
				out = append(out, fmt.Sprintf("removes %s %s", kind, k))
			}
		}
	}
	removed("frontend", keys(o.Frontends, func(f Frontend) string { return f.Name }), keys(n.Frontends, func(f Frontend) string { return f.Name }))
	removed("pool", keys(o.Pools, func(p Pool) string { return p.Name }), keys(n.Pools, func(p Pool) string { return p.Name }))
	removed("VIP", keys(o.VIPs, func(v VIP) string { return v.Address }), keys(n.VIPs, func(v VIP) string { return v.Address }))
	var oz, nz []string
	if o.DNS != nil {
		oz = keys(o.DNS.Zones, func(z Zone) string { return z.Name })
	}
	if n.DNS != nil {
		nz = keys(n.DNS.Zones, func(z Zone) string { return z.Name })
	}
	removed("DNS zone", oz, nz)
	for _, op := range o.Pools {
		i := slices.IndexFunc(n.Pools, func(p Pool) bool { return p.Name == op.Name })
		if i < 0 {
			continue // removed: said above
		}
		in, out2 := 0, []string{}
		for _, ob := range op.Backends {
			if !inRotation(ob) {
				continue
			}
			in++
			j := slices.IndexFunc(n.Pools[i].Backends, func(b Backend) bool { return b.Address == ob.Address })
			switch {
			case j < 0:
				out2 = append(out2, ob.Address+" removed")
			case n.Pools[i].Backends[j].State != "enabled":
				out2 = append(out2, ob.Address+" set to "+n.Pools[i].Backends[j].State)
			case *n.Pools[i].Backends[j].Weight == 0:
				out2 = append(out2, ob.Address+" set to weight 0")
			}
		}
		if len(out2)*4 > in {
			out = append(out, fmt.Sprintf("takes %d of the %d backends in rotation in pool %s out of rotation (%s)",
				len(out2), in, op.Name, strings.Join(out2, ", ")))
		}
	}
	return out
}

func inRotation(b Backend) bool { return b.State == "enabled" && *b.Weight > 0 }

// normalized is a defaulted copy of s with every backend's weight set, so that what a
// node would do, not how it was written, is compared.
func normalized(s Spec) *Spec {
	c := s.Clone()
	c.ApplyDefaults()
	for i := range c.Pools {
		for j := range c.Pools[i].Backends {
			if b := &c.Pools[i].Backends[j]; b.Weight == nil {
				w := DefaultWeight
				b.Weight = &w
			}
		}
	}
	return c
}

func keys[T any](items []T, key func(T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = key(it)
	}
	return out
}

// recordKey tells the records of one name apart: two MX records of a name differ in their
// exchange, two A records in the frontend, pool or values they answer with.
func recordKey(r Record) string {
	k := r.Name + " " + orDefault(r.Type, "A")
	for _, s := range []string{r.Exchange, r.Frontend, r.Pool} {
		if s != "" {
			k += " " + s
		}
	}
	if r.Exchange == "" && r.Frontend == "" && r.Pool == "" && len(r.Values) > 0 {
		k += " " + strings.Join(r.Values, ",")
	}
	return k
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// differ collects the lines of one diff.
type differ struct{ lines []string }

func (d *differ) add(line string) { d.lines = append(d.lines, line) }

// diffList matches two lists by key and reports added and removed items, then calls same
// for each item in both; ctx is what goes before "kind key". Keys are sorted; a key that
// repeats (an invalid spec) is told apart by its position ("name #2").
func diffList[T any](d *differ, ctx, kind string, old, new []T, key func(T) string, same func(ctx string, a, b T)) {
	diffListTitled(d, ctx, kind, old, new, key, nil, same)
}

// diffListTitled is diffList where title (nil: the key) says what a line calls an item.
func diffListTitled[T any](d *differ, ctx, kind string, old, new []T, key, title func(T) string, same func(ctx string, a, b T)) {
	if title == nil {
		title = key
	}
	om, nm := byKey(old, key), byKey(new, key)
	all := make([]string, 0, len(om)+len(nm))
	for k := range om {
		all = append(all, k)
	}
	for k := range nm {
		if _, ok := om[k]; !ok {
			all = append(all, k)
		}
	}
	slices.Sort(all)
	for _, k := range all {
		a, inOld := om[k]
		b, inNew := nm[k]
		switch {
		case !inNew:
			d.add("- " + ctx + kind + " " + titled(k, key(a), title(a)))
		case !inOld:
			d.add("+ " + ctx + kind + " " + titled(k, key(b), title(b)))
		default:
			same(ctx+kind+" "+titled(k, key(b), title(b)), a, b)
		}
	}
}

// titled is the map key k (a key with " #2" for a duplicate) shown as title: the key
// part replaced, the suffix kept.
func titled(k, key, title string) string {
	return title + strings.TrimPrefix(k, key)
}

func byKey[T any](items []T, key func(T) string) map[string]T {
	m := make(map[string]T, len(items))
	for _, it := range items {
		k := key(it)
		for n := 2; ; n++ {
			if _, dup := m[k]; !dup {
				break
			}
			k = key(it) + " #" + strconv.Itoa(n)
		}
		m[k] = it
	}
	return m
}

// fields reports every scalar field (by its YAML path below prefix) that differs between
// the structs a and b. Lists of structs are left to the caller, which matches them by key.
func (d *differ) fields(ctx, prefix string, a, b reflect.Value) {
	t := a.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if !sf.IsExported() || name == "-" || name == "" {
			continue
		}
		fa, fb := a.Field(i), b.Field(i)
		path := prefix + name
		switch {
		case sf.Type.Kind() == reflect.Slice && sf.Type.Elem().Kind() == reflect.Struct:
			continue // matched by key by the caller
		case sf.Type.Kind() == reflect.Struct:
			d.fields(ctx, path+".", fa, fb)
			continue
		case sf.Type.Kind() == reflect.Pointer && sf.Type.Elem().Kind() == reflect.Struct && !fa.IsNil() && !fb.IsNil():
			d.fields(ctx, path+".", fa.Elem(), fb.Elem()) // set on both sides: name the keys
			continue
		}
		if reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			continue
		}
		d.add(fmt.Sprintf("~ %s: %s %s -> %s", ctx, path, format(fa), format(fb)))
	}
}

// format writes one value for a diff line: durations as 2s, nil as -, empty text as "",
// lists as [a, b], a struct behind a pointer as {key: value, ...} of its set fields.
func format(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "-"
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.String:
		s := v.String()
		if s == "" || strings.ContainsAny(s, " \t\n\"") {
			return strconv.Quote(s)
		}
		return s
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = format(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.Struct:
		var parts []string
		t := v.Type()
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if f := v.Field(i); t.Field(i).IsExported() && name != "-" && !f.IsZero() {
				parts = append(parts, name+": "+format(f))
			}
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	if s, ok := v.Interface().(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprint(v.Interface())
}
