//! Voice time: a pure state machine that turns voice-state updates into segments of
//! eligible time, with the clock passed in.
//!
//! Old systems paid voice XP only when a member left and lost everything on restart.
//! Here every open session is cut into segments at least every [`VoiceRules::segment_ms`]
//! of eligible time (call [`VoiceSessions::tick`] periodically), so a crash loses at most
//! the open segment, and a restart that feeds the guild's current voice states to
//! [`VoiceSessions::rebuild`] counts members who are already in voice.
//!
//! A member's time is *eligible* while, with each rule switchable in [`VoiceRules`]:
//! they are in a channel that is not the AFK channel; not self- or server-muted; not
//! self- or server-deafened; and at least one other human in the same channel is not
//! deafened. Bots never earn time and are nobody's company.
//!
//! Time in voice that is not eligible is cut the same way into *unpaid* segments that
//! name the first reason that holds (AFK channel, deafened, muted, alone; the wire's
//! `voice_unpaid`), when [`VoiceRules::report_unpaid`] is on: the XP statement shows
//! them, and they pay nothing.
//!
//! Segments of one member, paid or not, never overlap, last whole seconds (1..=3600, the wire limit of
//! `voice` events) and start at a millisecond no other segment of that member starts at,
//! so `(member, start_ms)` is a deterministic event id. Ids are plain `u64`s (Discord
//! snowflakes); the adapter names guild, user and channel.

use std::collections::BTreeMap;

use crate::wire::Unpaid;

/// The longest segment a `voice` event may carry (SPEC 4: `seconds` 1..=3600).
pub const MAX_SEGMENT_MS: i64 = 3_600_000;

/// Which conditions make voice time eligible, and how often it is cut into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceRules {
    /// Self-muted or server-muted (or suppressed on a stage) members earn nothing.
    pub require_unmuted: bool,
    /// Self-deafened or server-deafened members earn nothing.
    pub require_undeafened: bool,
    /// Time in the guild's AFK channel earns nothing.
    pub exclude_afk: bool,
    /// A member alone, or only with bots or deafened people, earns nothing.
    pub require_company: bool,
    /// Time in voice that is not eligible is published too, as unpaid segments with
    /// their reason (`voice_unpaid`), so members can see why it paid nothing.
    pub report_unpaid: bool,
    /// An open segment is published once it is this long (at most [`MAX_SEGMENT_MS`]).
    /// With ticks every second, a crash loses less than the larger of this and
    /// `quantum_ms`, plus a second.
    pub segment_ms: i64,
    /// Published segments are whole multiples of this (1000 at least), and only the last
    /// segment of a stretch has a remainder. Voice XP is `seconds * rate / 60` per event,
    /// rounded down: with segments of whole quanta ([`xp_quantum_ms`]) no XP is lost to
    /// the cutting.
    pub quantum_ms: i64,
}

/// The shortest duration worth a whole number of XP at `voice_xp_per_minute`, in ms:
/// 15 s at 4 XP per minute, 60 s at 1 or 7.
pub fn xp_quantum_ms(voice_xp_per_minute: i64) -> i64 {
    let (mut a, mut b) = (60, voice_xp_per_minute.rem_euclid(60));
    while b != 0 {
        (a, b) = (b, a % b);
    }
    60_000 / a
}

impl Default for VoiceRules {
    fn default() -> Self {
        Self {
            require_unmuted: true,
            require_undeafened: true,
            exclude_afk: true,
            require_company: true,
            report_unpaid: true,
            segment_ms: 45_000,
            quantum_ms: 1000,
        }
    }
}

/// A member's voice state as the platform reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VoiceUpdate {
    pub user: u64,
    /// `None`: not in voice (left).
    pub channel: Option<u64>,
    pub self_mute: bool,
    /// Server mute (or stage suppression).
    pub mute: bool,
    pub self_deaf: bool,
    /// Server deafen.
    pub deaf: bool,
    pub bot: bool,
}

impl VoiceUpdate {
    fn deafened(&self) -> bool {
        self.self_deaf || self.deaf
    }

    fn muted(&self) -> bool {
        self.self_mute || self.mute
    }
}

/// A stretch of voice time of one member in one channel: eligible, or unpaid and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub user: u64,
    pub channel: u64,
    /// Start, Unix milliseconds; unique per member.
    pub start_ms: i64,
    /// Whole seconds, 1..=3600.
    pub seconds: u32,
    /// `None`: eligible time, which pays; else why it pays nothing.
    pub unpaid: Option<Unpaid>,
}

impl Segment {
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.seconds) * 1000
    }
}

#[derive(Debug, Clone)]
struct Member {
    state: VoiceUpdate,
    /// Start of the open segment and what it is (`None`: eligible), while the member's
    /// time is counted or, with [`VoiceRules::report_unpaid`], reported.
    open: Option<(i64, Option<Unpaid>)>,
}

/// The voice sessions of one guild.
#[derive(Debug, Clone)]
pub struct VoiceSessions {
    rules: VoiceRules,
    afk_channel: Option<u64>,
    /// Members in a voice channel, by user id.
    members: BTreeMap<u64, Member>,
    /// The latest time seen: the clock never goes backwards inside the machine.
    now: i64,
}

impl VoiceSessions {
    pub fn new(rules: VoiceRules) -> Self {
        Self {
            rules,
            afk_channel: None,
            members: BTreeMap::new(),
            now: i64::MIN,
        }
    }

    pub fn rules(&self) -> &VoiceRules {
        &self.rules
    }

    /// Members in voice now.
    pub fn in_voice(&self) -> usize {
        self.members.len()
    }

    /// Whether `user`'s time is being counted now.
    pub fn is_counting(&self, user: u64) -> bool {
        self.members
            .get(&user)
            .is_some_and(|m| matches!(m.open, Some((_, None))))
    }

    /// A clock that went backwards (NTP step) is held at the latest time seen, so that no
    /// segment ends before it starts.
    fn clock(&mut self, now: i64) -> i64 {
        self.now = self.now.max(now);
        self.now
    }

    /// A member joined, left, moved, (un)muted or (un)deafened.
    pub fn update(&mut self, update: VoiceUpdate, now: i64) -> Vec<Segment> {
        let now = self.clock(now);
        let mut out = Vec::new();
        let old_channel = self.members.get(&update.user).and_then(|m| m.state.channel);
        // A move closes the segment in the old channel even if the member stays
        // eligible, so that every segment names the channel it was earned in.
        if old_channel.is_some() && old_channel != update.channel {
            self.close(update.user, now, &mut out);
        }
        match update.channel {
            Some(_) => {
                let member = self.members.entry(update.user).or_insert(Member {
                    state: update,
                    open: None,
                });
                member.state = update;
            }
            None => {
                self.close(update.user, now, &mut out);
                self.members.remove(&update.user);
            }
        }
        for channel in [old_channel, update.channel].into_iter().flatten() {
            self.refresh_channel(channel, now, &mut out);
        }
        out
    }

    /// The guild's AFK channel changed (or became known).
    pub fn set_afk_channel(&mut self, afk: Option<u64>, now: i64) -> Vec<Segment> {
        let now = self.clock(now);
        self.afk_channel = afk;
        let mut out = Vec::new();
        self.refresh_all(now, &mut out);
        out
    }

    /// Replaces the whole state with the guild's current voice states (start-up,
    /// reconnect). Members whose state did not change keep their open segment; members
    /// no longer in voice are closed at `now`; members found in voice start counting now.
    pub fn rebuild(
        &mut self,
        states: impl IntoIterator<Item = VoiceUpdate>,
        afk: Option<u64>,
        now: i64,
    ) -> Vec<Segment> {
        let now = self.clock(now);
        let mut out = Vec::new();
        let current: BTreeMap<u64, VoiceUpdate> = states
            .into_iter()
            .filter(|s| s.channel.is_some())
            .map(|s| (s.user, s))
            .collect();
        let gone: Vec<u64> = self
            .members
            .keys()
            .filter(|u| !current.contains_key(u))
            .copied()
            .collect();
        for user in gone {
            self.close(user, now, &mut out);
            self.members.remove(&user);
        }
        for (user, state) in current {
            let member = self
                .members
                .entry(user)
                .or_insert(Member { state, open: None });
            if member.state.channel != state.channel {
                close_member(user, member, now, &mut out);
            }
            member.state = state;
        }
        self.afk_channel = afk;
        self.refresh_all(now, &mut out);
        out
    }

    /// Cuts every open segment that reached [`VoiceRules::segment_ms`] at its last whole
    /// quantum; the remainder stays open. Call it every second or so.
    pub fn tick(&mut self, now: i64) -> Vec<Segment> {
        let now = self.clock(now);
        let mut out = Vec::new();
        let segment_ms = self.rules.segment_ms.clamp(1000, MAX_SEGMENT_MS);
        // A quantum divides an hour (the longest segment) when it divides a minute.
        let quantum = self.rules.quantum_ms.clamp(1000, 60_000);
        for (user, member) in &mut self.members {
            let (Some((since, unpaid)), Some(channel)) = (member.open, member.state.channel) else {
                continue;
            };
            if now - since < segment_ms {
                continue;
            }
            let whole = (now - since) / quantum * quantum;
            if whole == 0 {
                continue;
            }
            push_segments(*user, channel, unpaid, since, since + whole, &mut out);
            member.open = Some((since + whole, unpaid));
        }
        out
    }

    /// Closes every open segment and forgets every member (graceful shutdown, guild
    /// unavailable): they count again after the next [`VoiceSessions::rebuild`].
    pub fn close_all(&mut self, now: i64) -> Vec<Segment> {
        let now = self.clock(now);
        let mut out = Vec::new();
        for (user, member) in &mut self.members {
            close_member(*user, member, now, &mut out);
        }
        self.members.clear();
        out
    }

    fn close(&mut self, user: u64, now: i64, out: &mut Vec<Segment>) {
        if let Some(member) = self.members.get_mut(&user) {
            close_member(user, member, now, out);
        }
    }

    /// What `user`'s time is now: `None` when it is not counted at all (not in voice, a
    /// bot), `Some(None)` when eligible, `Some(Some(why))` when it pays nothing.
    fn status(&self, user: u64) -> Option<Option<Unpaid>> {
        let m = self.members.get(&user)?;
        let s = &m.state;
        let channel = s.channel?;
        if s.bot {
            return None;
        }
        let r = &self.rules;
        let alone = || {
            !self.members.iter().any(|(other, o)| {
                *other != user
                    && o.state.channel == Some(channel)
                    && !o.state.bot
                    && !o.state.deafened()
            })
        };
        let why = if r.exclude_afk && self.afk_channel == Some(channel) {
            Some(Unpaid::Afk)
        } else if r.require_undeafened && s.deafened() {
            Some(Unpaid::Deafened)
        } else if r.require_unmuted && s.muted() {
            Some(Unpaid::Muted)
        } else if r.require_company && alone() {
            Some(Unpaid::Alone)
        } else {
            None
        };
        (why.is_none() || r.report_unpaid).then_some(why)
    }

    fn refresh_channel(&mut self, channel: u64, now: i64, out: &mut Vec<Segment>) {
        let users: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.state.channel == Some(channel))
            .map(|(u, _)| *u)
            .collect();
        for user in users {
            self.refresh(user, now, out);
        }
    }

    fn refresh_all(&mut self, now: i64, out: &mut Vec<Segment>) {
        let users: Vec<u64> = self.members.keys().copied().collect();
        for user in users {
            self.refresh(user, now, out);
        }
    }

    fn refresh(&mut self, user: u64, now: i64, out: &mut Vec<Segment>) {
        let status = self.status(user);
        let Some(member) = self.members.get_mut(&user) else {
            return;
        };
        if member.open.map(|(_, unpaid)| unpaid) != status {
            close_member(user, member, now, out);
            member.open = status.map(|unpaid| (now, unpaid));
        }
    }
}

/// Ends `m`'s open segment at `now`. The sub-second remainder is dropped: a segment is
/// whole seconds.
fn close_member(user: u64, m: &mut Member, now: i64, out: &mut Vec<Segment>) {
    if let (Some((since, unpaid)), Some(channel)) = (m.open.take(), m.state.channel) {
        let whole = (now - since) / 1000 * 1000;
        push_segments(user, channel, unpaid, since, since + whole, out);
    }
}

/// Emits `[from, to)` (whole seconds) as segments of at most [`MAX_SEGMENT_MS`].
fn push_segments(
    user: u64,
    channel: u64,
    unpaid: Option<Unpaid>,
    from: i64,
    to: i64,
    out: &mut Vec<Segment>,
) {
    let mut start = from;
    while to - start >= 1000 {
        let len = (to - start).min(MAX_SEGMENT_MS);
        out.push(Segment {
            user,
            channel,
            start_ms: start,
            seconds: u32::try_from(len / 1000).unwrap_or(3600),
            unpaid,
        });
        start += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_764_000_000_000;
    const LOBBY: u64 = 10;
    const GAMES: u64 = 11;
    const AFK: u64 = 99;

    fn join(user: u64, channel: u64) -> VoiceUpdate {
        VoiceUpdate {
            user,
            channel: Some(channel),
            ..VoiceUpdate::default()
        }
    }

    fn leave(user: u64) -> VoiceUpdate {
        VoiceUpdate {
            user,
            ..VoiceUpdate::default()
        }
    }

    fn secs(segments: &[Segment], user: u64) -> u32 {
        segments
            .iter()
            .filter(|s| s.user == user)
            .map(|s| s.seconds)
            .sum()
    }

    /// Eligible time alone (the unpaid segments have tests of their own).
    fn paid_only() -> VoiceRules {
        VoiceRules {
            report_unpaid: false,
            ..VoiceRules::default()
        }
    }

    fn sessions() -> VoiceSessions {
        VoiceSessions::new(VoiceRules {
            segment_ms: 55_000,
            ..paid_only()
        })
    }

    #[test]
    fn two_people_talking_earn_a_segment_each_every_segment_length() {
        let mut v = sessions();
        assert!(v.update(join(1, LOBBY), T0).is_empty());
        assert!(v.update(join(2, LOBBY), T0 + 500).is_empty());
        assert!(v.tick(T0 + 30_000).is_empty(), "nothing before 55 s");
        let out = v.tick(T0 + 56_200);
        assert_eq!(
            out,
            vec![
                Segment {
                    user: 1,
                    channel: LOBBY,
                    start_ms: T0 + 500,
                    seconds: 55,
                    unpaid: None,
                },
                Segment {
                    user: 2,
                    channel: LOBBY,
                    start_ms: T0 + 500,
                    seconds: 55,
                    unpaid: None,
                },
            ]
        );
        // The next segment starts where the last one ended: no gap, no overlap.
        let out = v.update(leave(1), T0 + 60_500);
        assert_eq!(
            out,
            vec![
                Segment {
                    user: 1,
                    channel: LOBBY,
                    start_ms: T0 + 55_500,
                    seconds: 5,
                    unpaid: None,
                },
                Segment {
                    user: 2,
                    channel: LOBBY,
                    start_ms: T0 + 55_500,
                    seconds: 5,
                    unpaid: None,
                },
            ]
        );
        assert!(!v.is_counting(2), "alone now");
    }

    #[test]
    fn segments_are_whole_xp_quanta_so_cutting_loses_no_xp() {
        assert_eq!(xp_quantum_ms(4), 15_000);
        assert_eq!(xp_quantum_ms(3), 20_000);
        assert_eq!(xp_quantum_ms(1), 60_000);
        assert_eq!(xp_quantum_ms(7), 60_000);
        assert_eq!(xp_quantum_ms(60), 1_000);
        assert_eq!(xp_quantum_ms(0), 1_000);
        let rules = VoiceRules {
            quantum_ms: xp_quantum_ms(4),
            ..paid_only()
        };
        let mut v = VoiceSessions::new(rules);
        v.update(join(1, LOBBY), T0);
        v.update(join(2, LOBBY), T0);
        let mut out = Vec::new();
        for s in 1..=3600 {
            out.extend(v.tick(T0 + s * 1000));
        }
        let mine: Vec<u32> = out
            .iter()
            .filter(|s| s.user == 1)
            .map(|s| s.seconds)
            .collect();
        assert!(mine.iter().all(|s| s % 15 == 0), "{mine:?}");
        // An hour pays what an hour pays: 240 XP at 4 per minute.
        let xp: u32 = mine.iter().map(|s| s * 4 / 60).sum::<u32>()
            + v.close_all(T0 + 3_600_000)
                .iter()
                .filter(|s| s.user == 1)
                .map(|s| s.seconds * 4 / 60)
                .sum::<u32>();
        assert_eq!(xp, 240);
        // At most 45 s wait unpublished at any tick (a crash loses less than a minute).
        assert!(mine.len() >= 3600 / 45 - 1);
    }

    #[test]
    fn a_member_alone_earns_nothing_until_someone_joins() {
        let mut v = sessions();
        v.update(join(1, LOBBY), T0);
        assert!(v.tick(T0 + 600_000).is_empty());
        v.update(join(2, LOBBY), T0 + 600_000);
        let out = v.update(leave(2), T0 + 620_000);
        assert_eq!(secs(&out, 1), 20);
        assert_eq!(secs(&out, 2), 20);
    }

    #[test]
    fn muting_stops_the_muted_member_only() {
        let mut v = sessions();
        v.update(join(1, LOBBY), T0);
        v.update(join(2, LOBBY), T0);
        let muted = VoiceUpdate {
            self_mute: true,
            ..join(1, LOBBY)
        };
        let out = v.update(muted, T0 + 10_000);
        assert_eq!(
            out,
            vec![Segment {
                user: 1,
                channel: LOBBY,
                start_ms: T0,
                seconds: 10,
                unpaid: None,
            }]
        );
        assert!(v.is_counting(2), "a muted listener is still company");
        let server_muted = VoiceUpdate {
            mute: true,
            ..join(1, LOBBY)
        };
        assert!(v.update(server_muted, T0 + 12_000).is_empty());
        assert!(!v.is_counting(1));
        v.update(join(1, LOBBY), T0 + 20_000);
        let out = v.close_all(T0 + 30_000);
        assert_eq!(secs(&out, 1), 10);
        assert_eq!(secs(&out, 2), 30);
    }

    #[test]
    fn deafening_stops_the_member_and_leaves_the_other_without_company() {
        let mut v = sessions();
        v.update(join(1, LOBBY), T0);
        v.update(join(2, LOBBY), T0);
        let out = v.update(
            VoiceUpdate {
                self_deaf: true,
                ..join(1, LOBBY)
            },
            T0 + 7_000,
        );
        assert_eq!(secs(&out, 1), 7);
        assert_eq!(secs(&out, 2), 7);
        assert!(!v.is_counting(2));
        let out = v.update(
            VoiceUpdate {
                deaf: true,
                ..join(1, LOBBY)
            },
            T0 + 9_000,
        );
        assert!(out.is_empty());
        v.update(join(1, LOBBY), T0 + 10_000);
        assert!(v.is_counting(1) && v.is_counting(2));
    }

    #[test]
    fn moving_closes_the_segment_in_the_old_channel() {
        let mut v = sessions();
        for u in [1, 2] {
            v.update(join(u, LOBBY), T0);
        }
        v.update(join(3, GAMES), T0);
        let out = v.update(join(1, GAMES), T0 + 4_000);
        assert_eq!(
            out,
            vec![
                Segment {
                    user: 1,
                    channel: LOBBY,
                    start_ms: T0,
                    seconds: 4,
                    unpaid: None,
                },
                Segment {
                    user: 2,
                    channel: LOBBY,
                    start_ms: T0,
                    seconds: 4,
                    unpaid: None,
                },
            ]
        );
        assert!(v.is_counting(1) && v.is_counting(3) && !v.is_counting(2));
        let out = v.close_all(T0 + 6_000);
        assert!(out.contains(&Segment {
            user: 1,
            channel: GAMES,
            start_ms: T0 + 4_000,
            seconds: 2,
            unpaid: None,
        }));
    }

    #[test]
    fn the_afk_channel_earns_nothing() {
        let mut v = sessions();
        v.set_afk_channel(Some(AFK), T0);
        v.update(join(1, AFK), T0);
        v.update(join(2, AFK), T0);
        assert!(v.tick(T0 + 120_000).is_empty());
        // Leaving the AFK channel for a talking channel starts the count.
        v.update(join(1, LOBBY), T0 + 120_000);
        v.update(join(2, LOBBY), T0 + 120_000);
        assert!(v.is_counting(1));
        // The operator makes the lobby the AFK channel: counting stops there.
        let out = v.set_afk_channel(Some(LOBBY), T0 + 125_000);
        assert_eq!(secs(&out, 1), 5);
        assert!(!v.is_counting(1));
    }

    #[test]
    fn bots_earn_nothing_and_are_no_company() {
        let mut v = sessions();
        v.update(join(1, LOBBY), T0);
        v.update(
            VoiceUpdate {
                bot: true,
                ..join(7, LOBBY)
            },
            T0,
        );
        assert!(!v.is_counting(1) && !v.is_counting(7));
    }

    #[test]
    fn each_rule_can_be_switched_off() {
        let lax = VoiceRules {
            require_unmuted: false,
            require_undeafened: false,
            exclude_afk: false,
            require_company: false,
            ..paid_only()
        };
        let mut v = VoiceSessions::new(lax);
        v.set_afk_channel(Some(AFK), T0);
        v.update(
            VoiceUpdate {
                self_mute: true,
                self_deaf: true,
                ..join(1, AFK)
            },
            T0,
        );
        assert!(
            v.is_counting(1),
            "alone, muted, deafened, in AFK: all allowed"
        );
        let out = v.update(leave(1), T0 + 3_000);
        assert_eq!(secs(&out, 1), 3);
    }

    fn reported() -> VoiceSessions {
        VoiceSessions::new(VoiceRules {
            segment_ms: 55_000,
            ..VoiceRules::default()
        })
    }

    fn kinds(segments: &[Segment], user: u64) -> Vec<(Option<Unpaid>, u32)> {
        segments
            .iter()
            .filter(|s| s.user == user)
            .map(|s| (s.unpaid, s.seconds))
            .collect()
    }

    #[test]
    fn time_that_pays_nothing_is_reported_with_its_reason() {
        let mut v = reported();
        let mut out = v.update(join(1, LOBBY), T0);
        // Alone for 20 s, then company: the alone stretch closes, eligible time starts.
        out.extend(v.update(join(2, LOBBY), T0 + 20_000));
        // Muted for 30 s; a muted listener is still company for user 2.
        out.extend(v.update(
            VoiceUpdate {
                self_mute: true,
                ..join(1, LOBBY)
            },
            T0 + 40_000,
        ));
        // Muted and deafened: deafened is named first.
        out.extend(v.update(
            VoiceUpdate {
                self_mute: true,
                self_deaf: true,
                ..join(1, LOBBY)
            },
            T0 + 70_000,
        ));
        out.extend(v.update(leave(1), T0 + 80_000));
        assert_eq!(
            kinds(&out, 1),
            [
                (Some(Unpaid::Alone), 20),
                (None, 20),
                (Some(Unpaid::Muted), 30),
                (Some(Unpaid::Deafened), 10),
            ]
        );
        // User 2: eligible while 1 listened, alone once 1 deafened.
        assert_eq!(kinds(&out, 2), [(None, 50)]);
        let out = v.update(leave(2), T0 + 95_000);
        assert_eq!(kinds(&out, 2), [(Some(Unpaid::Alone), 25)]);
    }

    #[test]
    fn the_afk_channel_is_named_before_anything_else_and_unpaid_time_is_cut_too() {
        let mut v = reported();
        v.set_afk_channel(Some(AFK), T0);
        v.update(
            VoiceUpdate {
                self_mute: true,
                ..join(1, AFK)
            },
            T0,
        );
        assert!(!v.is_counting(1));
        let out = v.tick(T0 + 60_000);
        assert_eq!(kinds(&out, 1), [(Some(Unpaid::Afk), 60)]);
        // Bots are never reported: they are not members earning anything.
        v.update(
            VoiceUpdate {
                bot: true,
                ..join(7, LOBBY)
            },
            T0,
        );
        assert!(v.close_all(T0 + 90_000).iter().all(|s| s.user != 7));
    }

    #[test]
    fn long_stretches_are_cut_to_the_wire_limit() {
        let rules = VoiceRules {
            require_company: false,
            ..paid_only()
        };
        let mut v = VoiceSessions::new(rules);
        v.update(join(1, LOBBY), T0);
        // No tick for two and a half hours (a stalled runtime).
        let out = v.tick(T0 + 9_000_000);
        assert_eq!(
            out.iter().map(|s| s.seconds).collect::<Vec<_>>(),
            vec![3600, 3600, 1800]
        );
        assert_eq!(out[1].start_ms, T0 + 3_600_000);
    }

    #[test]
    fn a_restart_mid_session_counts_members_already_in_voice() {
        // Before the restart: two people talk; one segment was published.
        let mut before = sessions();
        before.update(join(1, LOBBY), T0);
        before.update(join(2, LOBBY), T0);
        let published = before.tick(T0 + 55_000);
        assert_eq!(secs(&published, 1), 55);
        // Graceful restart: the open remainder is published on the way down.
        let flushed = before.close_all(T0 + 70_000);
        assert_eq!(secs(&flushed, 1), 15);
        // The new process starts from the guild's current voice states.
        let mut after = sessions();
        let out = after.rebuild([join(1, LOBBY), join(2, LOBBY)], None, T0 + 75_000);
        assert!(out.is_empty());
        assert!(after.is_counting(1) && after.is_counting(2));
        let out = after.tick(T0 + 130_000);
        assert_eq!(
            out[0],
            Segment {
                user: 1,
                channel: LOBBY,
                start_ms: T0 + 75_000,
                seconds: 55,
                unpaid: None,
            }
        );
        // Ids are (member, start): none repeats across the restart.
        let mut starts: Vec<(u64, i64)> = published
            .iter()
            .chain(&flushed)
            .chain(&out)
            .map(|s| (s.user, s.start_ms))
            .collect();
        let n = starts.len();
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), n);
    }

    #[test]
    fn a_rebuild_keeps_unchanged_sessions_and_closes_what_changed() {
        let mut v = sessions();
        for u in [1, 2, 3] {
            v.update(join(u, LOBBY), T0);
        }
        // After a reconnect: 3 left, 2 deafened meanwhile, 1 unchanged.
        let out = v.rebuild(
            [
                join(1, LOBBY),
                VoiceUpdate {
                    self_deaf: true,
                    ..join(2, LOBBY)
                },
            ],
            None,
            T0 + 20_000,
        );
        assert_eq!(secs(&out, 3), 20);
        assert_eq!(secs(&out, 2), 20);
        // 1 lost its only undeafened company.
        assert_eq!(secs(&out, 1), 20);
        assert_eq!(v.in_voice(), 2);
    }

    #[test]
    fn a_crash_loses_less_than_a_minute() {
        // Ticks every second; the process dies at every possible offset in a 3-minute
        // window: what was published covers all but less than 60 s of eligible time.
        for crash_after_ms in (0..180_000).step_by(700) {
            let mut v = sessions();
            v.update(join(1, LOBBY), T0);
            v.update(join(2, LOBBY), T0);
            let mut published = 0u32;
            let mut t = T0;
            while t + 1000 <= T0 + crash_after_ms {
                t += 1000;
                published += secs(&v.tick(t), 1);
            }
            let eligible_ms = crash_after_ms;
            let lost_ms = eligible_ms - i64::from(published) * 1000;
            assert!(
                (0..60_000).contains(&lost_ms),
                "crash at {crash_after_ms} ms lost {lost_ms} ms"
            );
        }
    }

    #[test]
    fn a_clock_stepping_back_never_makes_a_negative_segment() {
        let mut v = sessions();
        v.update(join(1, LOBBY), T0 + 10_000);
        v.update(join(2, LOBBY), T0 + 10_000);
        let out = v.update(leave(1), T0);
        assert!(out.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Update(VoiceUpdate),
        Advance(i64),
        Tick,
        Afk(Option<u64>),
        Rebuild,
    }

    fn op() -> impl Strategy<Value = Op> {
        let update = (
            0u64..5,
            prop_oneof![Just(None), (1u64..4).prop_map(Some)],
            any::<[bool; 4]>(),
        )
            .prop_map(|(user, channel, f)| {
                Op::Update(VoiceUpdate {
                    user,
                    channel,
                    self_mute: f[0] && f[1],
                    mute: f[0] && !f[1] && f[2],
                    self_deaf: f[2] && f[3] && f[1],
                    deaf: f[3] && !f[0] && f[1],
                    bot: user == 4,
                })
            });
        prop_oneof![
            4 => update,
            4 => (0i64..130_000).prop_map(Op::Advance),
            2 => Just(Op::Tick),
            1 => prop_oneof![Just(None), (1u64..4).prop_map(Some)].prop_map(Op::Afk),
            1 => Just(Op::Rebuild),
        ]
    }

    /// An independent statement of the rules, for the oracle.
    fn oracle_eligible(
        rules: &VoiceRules,
        states: &BTreeMap<u64, VoiceUpdate>,
        afk: Option<u64>,
        user: u64,
    ) -> Option<(u64, Option<Unpaid>)> {
        let s = states.get(&user)?;
        let channel = s.channel?;
        if s.bot {
            return None;
        }
        let company = states.values().filter(|o| {
            o.user != user && o.channel == Some(channel) && !o.bot && !o.self_deaf && !o.deaf
        });
        let reasons = [
            (rules.exclude_afk && afk == Some(channel), Unpaid::Afk),
            (
                rules.require_undeafened && (s.self_deaf || s.deaf),
                Unpaid::Deafened,
            ),
            (
                rules.require_unmuted && (s.self_mute || s.mute),
                Unpaid::Muted,
            ),
            (rules.require_company && company.count() == 0, Unpaid::Alone),
        ];
        let why = reasons
            .into_iter()
            .find(|(holds, _)| *holds)
            .map(|(_, why)| why);
        (why.is_none() || rules.report_unpaid).then_some((channel, why))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn eligible_time_never_exceeds_wall_time_and_segments_never_overlap(
            ops in proptest::collection::vec(op(), 1..120),
            company in any::<bool>(),
            report_unpaid in any::<bool>(),
            quantum_ms in prop_oneof![Just(1000i64), Just(15_000), Just(60_000)],
        ) {
            let rules = VoiceRules {
                require_company: company,
                report_unpaid,
                quantum_ms,
                ..VoiceRules::default()
            };
            let mut v = VoiceSessions::new(rules.clone());
            let mut out: Vec<Segment> = Vec::new();
            let mut states: BTreeMap<u64, VoiceUpdate> = BTreeMap::new();
            let mut afk = None;
            let mut now = T0;
            let mut first_seen: BTreeMap<u64, i64> = BTreeMap::new();
            // The oracle: exact ms per member and kind of time (eligible, or unpaid and
            // why), and how many times a stretch of it ended (each end may drop a
            // sub-second remainder).
            type Kind = (u64, Option<Unpaid>);
            let mut exact_ms: BTreeMap<Kind, i64> = BTreeMap::new();
            let mut breaks: BTreeMap<Kind, i64> = BTreeMap::new();
            let mut current: BTreeMap<u64, Option<(u64, Option<Unpaid>)>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Advance(ms) => {
                        for (u, c) in &current {
                            if let Some((_, why)) = c {
                                *exact_ms.entry((*u, *why)).or_default() += ms;
                            }
                        }
                        now += ms;
                    }
                    Op::Update(u) => {
                        first_seen.entry(u.user).or_insert(now);
                        if u.channel.is_some() { states.insert(u.user, u); } else { states.remove(&u.user); }
                        out.extend(v.update(u, now));
                    }
                    Op::Tick => out.extend(v.tick(now)),
                    Op::Afk(a) => { afk = a; out.extend(v.set_afk_channel(a, now)); }
                    Op::Rebuild => out.extend(v.rebuild(states.values().copied(), afk, now)),
                }
                for user in 0..5 {
                    let before = current.get(&user).copied().flatten();
                    let after = oracle_eligible(&rules, &states, afk, user);
                    if let Some((_, why)) = before && before != after {
                        *breaks.entry((user, why)).or_default() += 1;
                    }
                    current.insert(user, after);
                    let counting = matches!(after, Some((_, None)));
                    prop_assert_eq!(v.is_counting(user), counting, "user {} at {}", user, now - T0);
                }
            }
            out.extend(v.close_all(now));
            for (u, c) in &current {
                if let Some((_, why)) = c { *breaks.entry((*u, *why)).or_default() += 1; }
            }
            for user in 0..5u64 {
                let mut mine: Vec<&Segment> = out.iter().filter(|s| s.user == user).collect();
                mine.sort_by_key(|s| s.start_ms);
                for pair in mine.windows(2) {
                    prop_assert!(pair[0].end_ms() <= pair[1].start_ms, "overlap: {:?}", pair);
                }
                for s in &mine {
                    prop_assert!((1..=3600).contains(&s.seconds));
                    prop_assert!(s.start_ms >= first_seen[&user] && s.end_ms() <= now);
                }
                let total: i64 = mine.iter().map(|s| i64::from(s.seconds) * 1000).sum();
                let wall = first_seen.get(&user).map_or(0, |f| now - f);
                prop_assert!(total <= wall, "user {}: {} ms in voice in {} ms", user, total, wall);
                for why in std::iter::once(None).chain(Unpaid::ALL.map(Some)) {
                    let total: i64 = mine
                        .iter()
                        .filter(|s| s.unpaid == why)
                        .map(|s| i64::from(s.seconds) * 1000)
                        .sum();
                    let exact = exact_ms.get(&(user, why)).copied().unwrap_or(0);
                    let b = breaks.get(&(user, why)).copied().unwrap_or(0);
                    prop_assert!(total <= exact && exact - total <= 999 * b,
                        "user {} {:?}: published {} ms, exact {} ms, {} breaks",
                        user, why, total, exact, b);
                }
            }
        }
    }
}
