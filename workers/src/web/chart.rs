//! The XP-per-day bar chart of the profile page, as numbers for an inline SVG (no
//! script, no chart library). Pure.

use time::{Date, Duration};

/// Drawing area, in SVG user units (the SVG scales to the page width).
pub const WIDTH: f64 = 600.0;
pub const HEIGHT: f64 = 160.0;
/// Room below the bars for the date labels.
pub const AXIS: f64 = 18.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
    /// Tooltip, e.g. `2026-11-24: 120 XP`.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub bars: Vec<Bar>,
    /// XP of the best day (the top of the scale).
    pub max: i64,
    pub total: i64,
    pub first_day: String,
    pub last_day: String,
    pub days: usize,
}

/// A chart of `days` days ending with `last` (inclusive) from the ledger rows `xp`
/// (days absent from it earned nothing). Negative days (admin corrections) draw no bar
/// but count in the total.
pub fn xp_chart(xp: &[(Date, i64)], last: Date, days: u16) -> Chart {
    let days = usize::from(days.max(1));
    let first = last - Duration::days(days as i64 - 1);
    let mut per_day = vec![0_i64; days];
    for (day, amount) in xp {
        let i = (*day - first).whole_days();
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| per_day.get_mut(i)) {
            *slot += amount;
        }
    }
    let max = per_day.iter().copied().max().unwrap_or(0).max(0);
    let scale = (HEIGHT - AXIS) / max.max(1) as f64;
    let slot = WIDTH / days as f64;
    let bars = per_day
        .iter()
        .enumerate()
        .map(|(i, &amount)| {
            let h = amount.max(0) as f64 * scale;
            let day = first + Duration::days(i as i64);
            Bar {
                x: format!("{:.1}", i as f64 * slot + slot * 0.1),
                y: format!("{:.1}", HEIGHT - AXIS - h),
                width: format!("{:.1}", slot * 0.8),
                height: format!("{h:.1}"),
                label: format!("{day}: {amount} XP"),
            }
        })
        .collect();
    Chart {
        bars,
        max,
        total: per_day.iter().sum(),
        first_day: first.to_string(),
        last_day: last.to_string(),
        days,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn days_without_xp_are_zero_and_the_best_day_fills_the_height() {
        let c = xp_chart(
            &[(date!(2026 - 11 - 20), 50), (date!(2026 - 11 - 25), 100)],
            date!(2026 - 11 - 25),
            30,
        );
        assert_eq!(c.bars.len(), 30);
        assert_eq!((c.max, c.total), (100, 150));
        assert_eq!(c.first_day, "2026-10-27");
        let last = c.bars.last().expect("bar");
        assert_eq!(last.height, format!("{:.1}", HEIGHT - AXIS));
        assert_eq!(last.label, "2026-11-25: 100 XP");
        assert_eq!(c.bars[0].height, "0.0");
        assert_eq!(c.bars[24].label, "2026-11-20: 50 XP");
    }

    #[test]
    fn negative_and_out_of_range_days_draw_no_bar() {
        let c = xp_chart(
            &[(date!(2026 - 11 - 25), -40), (date!(2020 - 01 - 01), 999)],
            date!(2026 - 11 - 25),
            7,
        );
        assert_eq!((c.max, c.total), (0, -40));
        assert!(c.bars.iter().all(|b| b.height == "0.0"));
    }
}
