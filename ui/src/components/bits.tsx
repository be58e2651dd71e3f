// Small shared pieces: state badges, the help tooltip, numbers, times, errors.
import { ActionIcon, Alert, Badge, Tooltip } from '@mantine/core';
import { HELP } from '../help';

// Badge backgrounds chosen so white text stays above 4.5:1 (WCAG AA) in both themes.
const GREEN = '#1e6b30';
const BLUE = '#1c5fa8';
const GREY = '#495057';
const INDIGO = '#3b3f9e';
export const RED = '#a61e1e';
export const AMBER = '#8a4b00';
const STATE_COLOURS: Record<string, string> = {
  queued: GREY, planning: INDIGO, running: BLUE, succeeded: GREEN, failed: RED, cancelled: '#343a40',
  ok: GREEN, retrying: AMBER, ready: GREEN, processing: BLUE, uploading: GREY,
  pending: GREY, submitted: INDIGO,
};
export const BADGE = { GREEN, RED, GREY };

export function StateBadge({ state, label }: { state: string; label?: string }) {
  return (
    <Badge color={STATE_COLOURS[state] ?? GREY} variant="filled" aria-label={`${label ?? 'state'}: ${state}`}>
      {state}
    </Badge>
  );
}

/// An ⓘ button explaining a method or metric, on hover and on keyboard focus.
export function InfoTip({ topic, label }: { topic: string; label?: string }) {
  const text = HELP[topic];
  if (!text) return null;
  return (
    <Tooltip label={text} multiline w={320} events={{ hover: true, focus: true, touch: true }} withArrow>
      <ActionIcon variant="subtle" size="sm" aria-label={`What is ${label ?? topic}?`} component="span" tabIndex={0} role="button" aria-description={text}>
        <svg aria-hidden="true" width="16" height="16" viewBox="0 0 16 16" fill="none" stroke="currentColor" strokeWidth="1.5">
          <circle cx="8" cy="8" r="6.5" />
          <path d="M8 7v4.5M8 4.6v.2" strokeLinecap="round" />
        </svg>
      </ActionIcon>
    </Tooltip>
  );
}

export function ErrorNote({ error }: { error: string }) {
  if (!error) return null;
  return (
    <Alert color="red" variant="outline" title="Something went wrong" role="alert">
      {error}
    </Alert>
  );
}

export function fmtTime(unix: number | undefined | null): string {
  if (!unix) return '—';
  return new Date(unix * 1000).toLocaleString();
}

export function fmtNum(x: unknown, digits = 2): string {
  return typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '—';
}

export function fmtBytes(n: number | undefined): string {
  if (!n) return '—';
  return n > 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MB` : `${(n / 1024).toFixed(1)} KB`;
}

export function fmtEta(minutes: number | undefined | null): string {
  if (minutes == null) return '—';
  return minutes < 1 ? `${Math.max(1, Math.round(minutes * 60))} s` : `${minutes.toFixed(1)} min`;
}
