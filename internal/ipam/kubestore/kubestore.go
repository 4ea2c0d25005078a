// Package kubestore is the ipam.BlockStore of a real cluster: IPPools and IPAMBlocks (API group
// twill.dev, see api/v1alpha1) read and written with the dynamic client. Block ownership rides
// on the API server's guarantees: a claim is a create of the object named after the block's
// CIDR (exactly one node wins), a release is a delete guarded by the object's UID and
// resourceVersion (so it only ever removes the object that was checked).
package kubestore

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"

	"github.com/twill-net/twill/api/v1alpha1"
	"github.com/twill-net/twill/internal/ipam"
)

// Store implements ipam.BlockStore over the Kubernetes API.
type Store struct {
	pools, blocks dynamic.NamespaceableResourceInterface
	// Log receives warnings about objects that cannot be used (an IPPool with a bad CIDR, say);
	// slog.Default() unless set.
	Log *slog.Logger
}

var _ ipam.BlockStore = (*Store)(nil)

// maxReleaseAttempts bounds how often a release re-reads a block whose resourceVersion moved
// (its owner wrote its usage) between the read and the delete.
const maxReleaseAttempts = 5

// New returns a store using the dynamic client.
func New(dyn dynamic.Interface) *Store {
	return &Store{
		pools:  dyn.Resource(v1alpha1.IPPoolResource),
		blocks: dyn.Resource(v1alpha1.IPAMBlockResource),
		Log:    slog.Default(),
	}
}

// ListPools implements ipam.BlockStore. Pools that cannot be used are left out, with a warning.
func (s *Store) ListPools(ctx context.Context) ([]ipam.Pool, error) {
	list, err := s.pools.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPPools: %w", err)
	}
	pools := make([]ipam.Pool, 0, len(list.Items))
	for i := range list.Items {
		var obj v1alpha1.IPPool
		if err := fromUnstructured(&list.Items[i], &obj); err != nil {
			s.Log.Warn("ignoring IPPool", "name", list.Items[i].GetName(), "err", err)
			continue
		}
		p, err := PoolFromObject(&obj)
		if err != nil {
			s.Log.Warn("ignoring IPPool", "name", obj.Name, "err", err)
			continue
		}
		pools = append(pools, p)
	}
	return pools, nil
}

// ListBlocks implements ipam.BlockStore. Blocks that cannot be parsed are left out, with a
// warning; carving cannot see them, and a claim over one fails on its name.
func (s *Store) ListBlocks(ctx context.Context) ([]ipam.Block, error) {
	list, err := s.blocks.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPAMBlocks: %w", err)
	}
	blocks := make([]ipam.Block, 0, len(list.Items))
	for i := range list.Items {
		b, _, err := s.decodeBlock(&list.Items[i])
		if err != nil {
			s.Log.Warn("ignoring IPAMBlock", "name", list.Items[i].GetName(), "err", err)
			continue
		}
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// ClaimBlock implements ipam.BlockStore: a create, which fails with AlreadyExists when any
// node holds the block.
func (s *Store) ClaimBlock(ctx context.Context, b ipam.Block) error {
	obj := &v1alpha1.IPAMBlock{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "IPAMBlock"},
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.BlockName(b.CIDR)},
		Spec:       v1alpha1.IPAMBlockSpec{CIDR: b.CIDR.String(), Pool: b.Pool, Node: b.Node},
	}
	u, err := toUnstructured(obj)
	if err != nil {
		return err
	}
	created, err := s.blocks.Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("block %s: %w", b.CIDR, ipam.ErrBlockTaken)
	}
	if err != nil {
		return fmt.Errorf("creating IPAMBlock %s: %w", obj.Name, err)
	}
	// The status subresource ignores status on create: fill in capacity now, so kubectl shows
	// it before the first pod. Best effort: the owner's usage writes set it too.
	if err := s.writeStatus(ctx, created, b.Allocated, b.Capacity()); err != nil {
		s.Log.Warn("writing status of a new IPAMBlock", "name", obj.Name, "err", err)
	}
	return nil
}

// ReleaseBlock implements ipam.BlockStore: read, check the owner, delete with preconditions on
// what was read.
func (s *Store) ReleaseBlock(ctx context.Context, b ipam.Block) error {
	name := v1alpha1.BlockName(b.CIDR)
	for range maxReleaseAttempts {
		u, err := s.blocks.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading IPAMBlock %s: %w", name, err)
		}
		cur, _, err := s.decodeBlock(u)
		if err != nil {
			return err
		}
		if cur.Node != b.Node || cur.CIDR != b.CIDR {
			return nil // not the listed owner's any more
		}
		uid, rv := u.GetUID(), u.GetResourceVersion()
		err = s.blocks.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
		switch {
		case err == nil, apierrors.IsNotFound(err):
			return nil
		case apierrors.IsConflict(err):
			continue // changed since read (a usage write, or a new owner): look again
		default:
			return fmt.Errorf("deleting IPAMBlock %s: %w", name, err)
		}
	}
	return fmt.Errorf("deleting IPAMBlock %s: it kept changing", name)
}

// SetBlockUsage implements ipam.BlockStore: a status update of the block while b.Node owns it,
// retried on conflict.
func (s *Store) SetBlockUsage(ctx context.Context, b ipam.Block) error {
	name := v1alpha1.BlockName(b.CIDR)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := s.blocks.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("block %s: %w", b.CIDR, ipam.ErrBlockNotFound)
		}
		if err != nil {
			return fmt.Errorf("reading IPAMBlock %s: %w", name, err)
		}
		cur, status, err := s.decodeBlock(u)
		if err != nil {
			return err
		}
		if cur.Node != b.Node {
			return fmt.Errorf("block %s belongs to node %q now: %w", b.CIDR, cur.Node, ipam.ErrBlockNotFound)
		}
		if status.Allocated == b.Allocated && status.Capacity == b.Capacity() {
			return nil
		}
		return s.writeStatus(ctx, u, b.Allocated, b.Capacity())
	})
}

// writeStatus updates the status of the object as read (its resourceVersion guards the write).
func (s *Store) writeStatus(ctx context.Context, u *unstructured.Unstructured, allocated, capacity int) error {
	status := map[string]any{"allocated": int64(allocated), "capacity": int64(capacity)}
	next := u.DeepCopy()
	if err := unstructured.SetNestedMap(next.Object, status, "status"); err != nil {
		return err
	}
	_, err := s.blocks.UpdateStatus(ctx, next, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("updating status of IPAMBlock %s: %w", u.GetName(), err)
	}
	return err
}

// EnsurePool implements ipam.BlockStore.
func (s *Store) EnsurePool(ctx context.Context, p ipam.Pool) error {
	u, err := toUnstructured(PoolObject(p))
	if err != nil {
		return err
	}
	_, err = s.pools.Create(ctx, u, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating IPPool %s: %w", p.Name, err)
	}
	return nil
}

// PoolObject is the IPPool object of a pool.
func PoolObject(p ipam.Pool) *v1alpha1.IPPool {
	return &v1alpha1.IPPool{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "IPPool"},
		ObjectMeta: metav1.ObjectMeta{Name: p.Name},
		Spec:       v1alpha1.IPPoolSpec{CIDR: p.CIDR.String(), BlockSize: p.BlockSize, Disabled: p.Disabled},
	}
}

// PoolFromObject reads a pool from its object, with defaults applied, and checks it.
func PoolFromObject(obj *v1alpha1.IPPool) (ipam.Pool, error) {
	cidr, err := netip.ParsePrefix(obj.Spec.CIDR)
	if err != nil {
		return ipam.Pool{}, fmt.Errorf("IPPool %s: %w", obj.Name, err)
	}
	p := ipam.Pool{Name: obj.Name, CIDR: cidr, BlockSize: obj.Spec.BlockSize, Disabled: obj.Spec.Disabled}.WithDefaults()
	return p, p.Validate()
}

// BlockFromObject reads a block from its object.
func BlockFromObject(obj *v1alpha1.IPAMBlock) (ipam.Block, error) {
	cidr, err := netip.ParsePrefix(obj.Spec.CIDR)
	if err != nil {
		return ipam.Block{}, fmt.Errorf("IPAMBlock %s: %w", obj.Name, err)
	}
	if cidr != cidr.Masked() || obj.Spec.Node == "" {
		return ipam.Block{}, fmt.Errorf("IPAMBlock %s: invalid spec %+v", obj.Name, obj.Spec)
	}
	return ipam.Block{CIDR: cidr, Pool: obj.Spec.Pool, Node: obj.Spec.Node, Allocated: obj.Status.Allocated}, nil
}

func (s *Store) decodeBlock(u *unstructured.Unstructured) (ipam.Block, v1alpha1.IPAMBlockStatus, error) {
	var obj v1alpha1.IPAMBlock
	if err := fromUnstructured(u, &obj); err != nil {
		return ipam.Block{}, obj.Status, err
	}
	b, err := BlockFromObject(&obj)
	return b, obj.Status, err
}

func toUnstructured(obj runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("converting %T: %w", obj, err)
	}
	return &unstructured.Unstructured{Object: m}, nil
}

func fromUnstructured(u *unstructured.Unstructured, into any) error {
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		return fmt.Errorf("decoding %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return nil
}
